-- :checkhealth codehop (Neovim 0.7's `health` module, 0.8-0.9's report_*, 0.10+'s vim.health).
local M = {}

local function reporter()
  local h = vim.health or require("health")
  return {
    start = h.start or h.report_start, ok = h.ok or h.report_ok,
    warn = h.warn or h.report_warn, error = h.error or h.report_error, info = h.info or h.report_info,
  }
end

function M.check()
  local report = reporter()
  local codehop = require("codehop")
  report.start("codehop")
  if vim.fn.has("nvim-0.7") == 1 then
    report.ok("Neovim " .. tostring(vim.version().major) .. "." .. tostring(vim.version().minor)
      .. " (0.7 or newer)")
  else
    report.error("Neovim 0.7 or newer is needed")
  end
  local cmd = codehop.config.cmd
  if vim.fn.executable(cmd[1]) == 1 then
    report.ok("server command: " .. table.concat(cmd, " "))
    local help = vim.fn.system(vim.list_extend(vim.deepcopy(cmd), { "--help" }))
    if vim.v.shell_error == 0 and help:find("usage") then
      report.ok("`" .. table.concat(cmd, " ") .. " --help` runs")
    else
      report.error("`" .. table.concat(cmd, " ") .. " --help` failed: " .. help:sub(1, 300),
        { "install codehop (bash scripts/setup.sh) and set cmd in require('codehop').setup{}" })
    end
  else
    report.error(cmd[1] .. " is not executable",
      { "set cmd = { '/path/to/codehop/.venv/bin/codehop', 'lsp' } in require('codehop').setup{}" })
  end
  local servers = codehop.servers()
  if #servers == 0 then
    report.info("no codehop server running (it starts for files of the filetypes "
      .. table.concat(codehop.config.filetypes, ", ") .. ")")
  end
  for _, server in ipairs(servers) do
    local line = "server for " .. tostring(server.root) .. ": " .. server.state
    if server.state == "ready" or server.state == "indexing" or server.state == "starting" then
      report.ok(line)
    else
      report.warn(line, { "see :LspLog; check the cmd given to require('codehop').setup{}" })
    end
  end
  if vim.lsp.inline_completion then
    report.ok("inline completion (ghost text): available")
  else
    report.info("inline completion needs Neovim 0.12+; completion works through omnifunc (<C-x><C-o>)")
  end
end

return M
