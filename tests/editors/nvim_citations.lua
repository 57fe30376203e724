-- The answer split of :CodehopAsk (no server needed): <CR> on a "[n]" in the answer text opens
-- source n, as <CR> on a source line does. Writes what it saw to $CODEHOP_OUT.
local out = {}

local ok, err = xpcall(function()
  local codehop = require("codehop")
  local root = os.getenv("CODEHOP_ROOT")
  local result = {
    answer = "Writes go to a temp name first [1], then are renamed into place [2].",
    cited = { 1, 2 },
    sources = {
      { number = 1, path = root .. "/README.md", start_line = 3, end_line = 3, score = 0.9, text = "temp" },
      { number = 2, path = root .. "/utils.py", start_line = 2, end_line = 3, score = 0.8, text = "rename" },
    },
  }
  local buf = codehop._show_answer("How are writes atomic?", result, root)
  local lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  local row = 3 -- "# question", "", then the answer
  out.answer_line = lines[row]
  local col = lines[row]:find("[2]", 1, true) -- on the "[" of "[2]"
  vim.api.nvim_win_set_cursor(0, { row, col })  -- 0-based column: the "2"
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("<CR>", true, false, true), "x", false)
  out.opened = { file = vim.api.nvim_buf_get_name(0), line = vim.api.nvim_win_get_cursor(0)[1] }
  vim.cmd("wincmd p")
  vim.api.nvim_win_set_cursor(0, { row, 0 }) -- not on a citation: nothing opens
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("<CR>", true, false, true), "x", false)
  out.stayed = vim.api.nvim_get_current_buf() == buf
end, debug.traceback)

if not ok then out.error = err end
local file = io.open(os.getenv("CODEHOP_OUT"), "w")
file:write(vim.fn.json_encode(out))
file:close()
vim.cmd("qa!")
