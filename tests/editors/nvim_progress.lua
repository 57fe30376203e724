-- Drives codehop's Neovim statusline through a server that reports progress step by step
-- (tests/editors/progress_server.py): after each report, what status() shows. Writes the
-- statuses to $CODEHOP_OUT.
local out = { statuses = {} }

local ok, err = xpcall(function()
  vim.cmd("filetype on")
  local codehop = require("codehop")
  codehop.setup({ cmd = vim.fn.json_decode(os.getenv("CODEHOP_CMD")),
                  cmd_env = vim.fn.json_decode(os.getenv("CODEHOP_ENV")) })
  vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("CODEHOP_MAIN")))
  local last = nil
  for step = 0, 5 do -- begin, four reports, end
    local changed = vim.wait(20000, function()
      local line = codehop.status()
      return line ~= last and (step == 5 or line:find("embedding", 1, true) ~= nil)
    end, 10)
    if not changed then error("the status did not change at step " .. step .. ": " .. codehop.status()) end
    last = codehop.status()
    table.insert(out.statuses, last)
    if step < 5 then
      local client = codehop.client()
      if vim.fn.has("nvim-0.11") == 1 then client:request("test/next", {}, function() end)
      else client.request("test/next", {}, function() end) end
    end
  end
end, debug.traceback)

if not ok then out.error = err end
local file = io.open(os.getenv("CODEHOP_OUT"), "w")
file:write(vim.fn.json_encode(out))
file:close()
vim.cmd("qa!")
