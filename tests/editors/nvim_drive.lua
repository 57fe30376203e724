-- Drives codehop's Neovim plugin headless (run by test_nvim.py): setup(), open main.py of a
-- small repository, wait for the indexing, completion and hover through the built-in client,
-- :CodehopAsk, <CR> on a source, :checkhealth codehop. Writes what it saw to $CODEHOP_OUT.
local out = { version = vim.version().major .. "." .. vim.version().minor .. "." .. vim.version().patch }

local function lsp(method, params)
  local responses = vim.lsp.buf_request_sync(0, method, params, 120000) or {}
  for _, response in pairs(responses) do
    if response.err then return { error = response.err.message } end
    return response.result
  end
  return { error = "no response" }
end

local ok, err = xpcall(function()
  vim.cmd("filetype on")
  local codehop = require("codehop")
  codehop.setup({ cmd = vim.fn.json_decode(os.getenv("CODEHOP_CMD")),
                  cmd_env = vim.fn.json_decode(os.getenv("CODEHOP_ENV")) })
  vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("CODEHOP_MAIN")))
  out.filetype = vim.bo.filetype
  local states, statuses = {}, {}
  vim.wait(240000, function()
    local s, line = codehop.state(), codehop.status()
    if states[#states] ~= s then table.insert(states, s) end
    if statuses[#statuses] ~= line then table.insert(statuses, line) end
    return s == "ready"
  end, 20)
  out.states, out.statuses = states, statuses
  local uri = vim.uri_from_bufnr(0)
  local completion = lsp("textDocument/completion",
    { textDocument = { uri = uri }, position = { line = 2, character = #"name = slugify(" } })
  local items = completion.items or completion
  out.completion = { error = completion.error, count = #items,
                     new_text = items[1] and items[1].textEdit and items[1].textEdit.newText }
  local hover = lsp("textDocument/hover", { textDocument = { uri = uri }, position = { line = 0, character = 20 } })
  out.hover = hover.error or (hover.contents and hover.contents.value)

  vim.cmd("CodehopAsk " .. os.getenv("CODEHOP_QUESTION"))
  vim.wait(240000, function() return codehop.last_answer ~= nil end, 50)
  local answer = codehop.last_answer
  out.answer = { text = answer.answer, cited = answer.cited, paths = {} }
  for _, s in ipairs(answer.sources) do table.insert(out.answer.paths, s.path) end
  out.answer_lines = vim.api.nvim_buf_get_lines(answer.bufnr, 0, -1, false)
  out.answer_window = vim.api.nvim_get_current_buf() == answer.bufnr
  out.quickfix = {}
  for _, item in ipairs(vim.fn.getqflist()) do
    table.insert(out.quickfix, { file = vim.api.nvim_buf_get_name(item.bufnr), lnum = item.lnum })
  end
  -- <CR> on the README source line opens README.md at that line
  for i, line in ipairs(out.answer_lines) do
    if line:find("README.md", 1, true) and line:match("^%[%d+%]") then
      vim.api.nvim_win_set_cursor(0, { i, 0 })
      vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("<CR>", true, false, true), "x", false)
      out.opened = { file = vim.api.nvim_buf_get_name(0), line = vim.api.nvim_win_get_cursor(0)[1] }
      break
    end
  end
  vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("CODEHOP_MAIN")))
  vim.cmd("checkhealth codehop")
  out.health = vim.api.nvim_buf_get_lines(0, 0, -1, false)
end, debug.traceback)

if not ok then out.error = err end
local file = io.open(os.getenv("CODEHOP_OUT"), "w")
file:write(vim.fn.json_encode(out))
file:close()
vim.cmd("qa!")
