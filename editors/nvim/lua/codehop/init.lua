-- codehop for Neovim's built-in LSP client: starts `codehop lsp` for the buffers of the
-- configured filetypes (one server per project root), tracks its indexing progress for the
-- statusline, and adds :CodehopAsk (the answer in a split, sources in the quickfix list).
-- Works on Neovim 0.7 (Debian 12) through current releases: newer APIs are feature-tested.
local M = {}

M.defaults = {
  cmd = { "codehop", "lsp" },
  cmd_env = nil,
  filetypes = { "python", "javascript", "typescript", "go", "rust", "java", "c", "cpp", "markdown" },
  root_markers = { ".git", "pyproject.toml", "setup.py", "package.json", "go.mod", "Cargo.toml" },
  inline_completion = true, -- ghost text where the client has it (Neovim 0.12+)
  keymaps = true,           -- K: hover on Neovim < 0.10 (newer ones map it themselves)
  on_attach = nil,
}

M.config = vim.deepcopy(M.defaults)
M.last_answer = nil -- { question, answer, sources, cited, bufnr } of the latest :CodehopAsk
local state = {}    -- client id -> { progress = { token -> text }, ready = bool }
local clients = {}  -- root -> client id (Neovim 0.7 has no vim.lsp.start to reuse clients)

local function has(version) return vim.fn.has("nvim-" .. version) == 1 end

local function find_root(path)
  local dir = vim.fn.fnamemodify(path, ":p:h")
  while dir and dir ~= "" do
    for _, marker in ipairs(M.config.root_markers) do
      if vim.loop.fs_stat(dir .. "/" .. marker) then return dir end
    end
    local parent = vim.fn.fnamemodify(dir, ":h")
    if parent == dir then break end
    dir = parent
  end
  return vim.fn.fnamemodify(path, ":p:h")
end

-- One work-done progress as the statusline shows it: "embedding 40%". A report carries no
-- title (only begin does), so the title is kept apart from the percentage and the text is
-- rebuilt from both each time; appending to the previous text made it grow without end.
-- A single "%": the result of %{...} in 'statusline' is shown as it is, not re-parsed.
local function progress_text(p)
  return p.title .. (p.percentage and (" " .. p.percentage .. "%") or "")
end

local function progress_handler(err, result, ctx, config)
  local default = vim.lsp.handlers["$/progress"]
  if result and result.value and ctx and ctx.client_id then
    local s = state[ctx.client_id]
    if s then
      local token, value = tostring(result.token), result.value
      if value.kind == "end" then
        s.progress[token] = nil
        -- the server indexes the code ("codehop-index"), then the documentation ("codehop-docs")
        if token == "codehop-index" then s.indexed = true end
        if token == "codehop-docs" then s.ready = true end
      else
        local p = s.progress[token] or { title = "working" }
        if value.title then p.title = (value.title:gsub("^codehop:%s*", "")) end
        if value.percentage then p.percentage = value.percentage end
        s.progress[token] = p
      end
      pcall(vim.cmd, "redrawstatus")
    end
  end
  if default then return default(err, result, ctx, config) end
end

local function on_attach(client, bufnr)
  vim.api.nvim_buf_set_option(bufnr, "omnifunc", "v:lua.vim.lsp.omnifunc")
  if M.config.keymaps and not has("0.10") then
    vim.keymap.set("n", "K", vim.lsp.buf.hover, { buffer = bufnr, desc = "codehop hover" })
  end
  if M.config.inline_completion and vim.lsp.inline_completion then
    pcall(vim.lsp.inline_completion.enable, true, { bufnr = bufnr })
  end
  if M.config.on_attach then M.config.on_attach(client, bufnr) end
end

--- Starts (or reuses) the server for `bufnr`'s project and attaches the buffer.
function M.start(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local name = vim.api.nvim_buf_get_name(bufnr)
  if name == "" or vim.bo[bufnr].buftype ~= "" then return nil end
  local root = find_root(name)
  local config = {
    name = "codehop",
    cmd = M.config.cmd,
    cmd_env = M.config.cmd_env,
    root_dir = root,
    workspace_folders = { { uri = vim.uri_from_fname(root), name = vim.fn.fnamemodify(root, ":t") } },
    handlers = { ["$/progress"] = progress_handler },
    on_init = function(client) state[client.id] = { progress = {}, ready = false } end,
    on_attach = on_attach,
    on_exit = function(_, _, id) if state[id] then state[id].exited = true end end,
  }
  if vim.lsp.start then -- 0.8+: reuses a client with the same name and root
    return vim.lsp.start(config, { bufnr = bufnr })
  end
  local id = clients[root]
  if not id or not vim.lsp.get_client_by_id(id) then
    id = vim.lsp.start_client(config)
    clients[root] = id
  end
  if id then vim.lsp.buf_attach_client(bufnr, id) end
  return id
end

--- The codehop client attached to `bufnr` (default: the current buffer), or nil.
function M.client(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local found = vim.lsp.get_clients and vim.lsp.get_clients({ bufnr = bufnr, name = "codehop" })
      or vim.tbl_values(vim.lsp.buf_get_clients(bufnr))
  for _, client in ipairs(found) do
    if client.name == "codehop" then return client end
  end
  return nil
end

--- "starting" | "indexing" | "ready" | "stopped" | "off" for the current buffer's server.
function M.state(bufnr)
  local client = M.client(bufnr)
  if not client then return "off" end
  local s = state[client.id]
  if not s then return "starting" end
  if s.exited then return "stopped" end
  if next(s.progress) or (s.indexed and not s.ready) then return "indexing" end
  return s.ready and "ready" or "starting"
end

--- Every running codehop server: { { root = ..., state = ... }, ... }
function M.servers()
  local found = {}
  local all = vim.lsp.get_clients and vim.lsp.get_clients({ name = "codehop" }) or vim.lsp.get_active_clients()
  for _, client in ipairs(all) do
    if client.name == "codehop" then
      local s = state[client.id] or { progress = {} }
      local current = s.exited and "stopped" or (next(s.progress) or (s.indexed and not s.ready)) and "indexing"
          or s.ready and "ready" or "starting"
      table.insert(found, { root = client.config.root_dir, state = current })
    end
  end
  return found
end

--- A statusline component, e.g. set statusline+=%{v:lua.require'codehop'.status()}
function M.status(bufnr)
  local current = M.state(bufnr)
  if current == "off" then return "" end
  if current == "indexing" then
    local progress, tokens, busy = state[M.client(bufnr).id].progress, {}, {}
    for token in pairs(progress) do table.insert(tokens, token) end
    table.sort(tokens) -- pairs() has no order: a stable one keeps the statusline from jumping
    for _, token in ipairs(tokens) do table.insert(busy, progress_text(progress[token])) end
    return "codehop: " .. (#busy > 0 and table.concat(busy, ", ") or "indexing")
  end
  return "codehop: " .. current
end

local function request(client, method, params, handler, bufnr)
  if has("0.11") then return client:request(method, params, handler, bufnr) end
  return client.request(method, params, handler, bufnr)
end

local function relative(path, root)
  if root and path:sub(1, #root + 1) == root .. "/" then return path:sub(#root + 2) end
  return path
end

-- The source a "[n]" under column `col` (1-based) of `line` cites, or nil.
local function cited_under(line, col, sources)
  if not line then return nil end
  local from = 1
  while true do
    local first, last, n = line:find("%[(%d+)%]", from)
    if not first then return nil end
    if col >= first and col <= last then
      for _, s in ipairs(sources) do
        if s.number == tonumber(n) then return s end
      end
      return nil
    end
    from = last + 1
  end
end

local function show_answer(question, result, root)
  local lines = { "# " .. question, "" }
  vim.list_extend(lines, vim.split(result.answer ~= "" and result.answer or "(no answer)", "\n"))
  vim.list_extend(lines, { "", "Sources (<CR> on one, or on a [n] above, opens it; also in the quickfix list):" })
  local at_line, items = {}, {}
  local cited = {}
  for _, n in ipairs(result.cited or {}) do cited[n] = true end
  for _, s in ipairs(result.sources) do
    local where = string.format("%s:%d-%d", relative(s.path, root), s.start_line, s.end_line)
    table.insert(lines, string.format("[%d]%s %s  (%.3f)", s.number, cited[s.number] and "*" or "", where, s.score))
    at_line[#lines] = s
    table.insert(items, { filename = s.path, lnum = s.start_line,
                          text = string.format("[%d] %s", s.number, (s.text:gsub("%s+", " ")):sub(1, 120)) })
  end
  vim.fn.setqflist({}, " ", { title = "codehop: " .. question, items = items })
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.api.nvim_buf_set_option(buf, "modifiable", false)
  vim.api.nvim_buf_set_option(buf, "filetype", "markdown")
  pcall(vim.api.nvim_buf_set_name, buf, "codehop://answer/" .. buf)
  vim.keymap.set("n", "<CR>", function()
    local cursor = vim.api.nvim_win_get_cursor(0)
    local s = at_line[cursor[1]] or cited_under(lines[cursor[1]], cursor[2] + 1, result.sources)
    if not s then return end
    vim.cmd("wincmd p")
    vim.cmd("edit " .. vim.fn.fnameescape(s.path))
    vim.api.nvim_win_set_cursor(0, { math.max(1, s.start_line), 0 })
  end, { buffer = buf, desc = "codehop: open this source" })
  vim.cmd("botright split")
  vim.api.nvim_win_set_buf(0, buf)
  vim.wo.number, vim.wo.relativenumber, vim.wo.wrap, vim.wo.linebreak = false, false, true, true
  return buf
end

M._show_answer = show_answer -- for tests: the answer split without a server

--- Asks the workspace (workspace/executeCommand "codehop.ask"); shows the answer in a split.
--- `callback(err, answer)` is called with the result too.
function M.ask(question, callback)
  local client = M.client()
  if not client then
    local message = "codehop: no codehop server for this buffer (open a file of a configured filetype)"
    vim.notify(message, vim.log.levels.ERROR)
    if callback then callback(message) end
    return
  end
  vim.notify("codehop: asking…", vim.log.levels.INFO)
  local root = client.config.root_dir
  request(client, "workspace/executeCommand", { command = "codehop.ask", arguments = { question } },
    function(err, result)
      if err then
        vim.notify("codehop: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
        if callback then callback(err.message or "error") end
        return
      end
      vim.api.nvim_echo({ { "" } }, false, {}) -- clears "asking…"
      local buf = show_answer(question, result, root)
      M.last_answer = { question = question, answer = result.answer, sources = result.sources,
                        cited = result.cited, bufnr = buf }
      if callback then callback(nil, M.last_answer) end
    end, vim.api.nvim_get_current_buf())
end

--- setup({ cmd = {...}, cmd_env = {...}, filetypes = {...}, root_markers = {...}, ... })
function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  if opts and opts.filetypes then M.config.filetypes = opts.filetypes end -- lists replace
  if opts and opts.cmd then M.config.cmd = opts.cmd end
  local group = vim.api.nvim_create_augroup("codehop", { clear = true })
  vim.api.nvim_create_autocmd("FileType", {
    group = group, pattern = M.config.filetypes,
    callback = function(args) M.start(args.buf) end,
  })
  vim.api.nvim_create_user_command("CodehopAsk", function(command)
    if command.args ~= "" then return M.ask(command.args) end
    vim.ui.input({ prompt = "codehop: Ask: " }, function(question)
      if question and question ~= "" then M.ask(question) end
    end)
  end, { nargs = "*", desc = "codehop: ask a question about the workspace" })
  vim.api.nvim_create_user_command("CodehopStatus", function() print(M.status()) end, {})
  -- buffers that are already open
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) and vim.tbl_contains(M.config.filetypes, vim.bo[buf].filetype) then
      M.start(buf)
    end
  end
end

return M
