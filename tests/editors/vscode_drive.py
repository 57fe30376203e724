"""Drives the codehop extension inside a real VS Code (code-server) through Chromium (playwright).

Run by scripts/vscode_e2e.sh, which installs code-server, installs the built .vsix and starts
code-server on --base (the folder --folder open, workspace trust off). Opens main.py, then
checks what a user sees: the status-bar item going from indexing to ready, the hover on
`slugify`, an inline completion (ghost text) at the end of the file and the "codehop: Ask"
panel with its sources. Writes what it saw to OUT/result.json and screenshots to OUT.

    python tests/editors/vscode_drive.py --base http://127.0.0.1:8080 --folder DIR --chromium PATH --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

QUESTION = "How do I turn page titles into URL paths?"


def _palette(page, command: str) -> None:
    page.keyboard.press("F1")
    page.wait_for_selector(".quick-input-widget input", timeout=30_000)
    page.keyboard.type(command)
    page.wait_for_selector(f".quick-input-list .monaco-list-row:has-text('{command.lstrip('>')}')", timeout=30_000)
    page.keyboard.press("Enter")


def drive(base: str, folder: Path, chromium: str, out: Path, seen: dict) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda e: seen.setdefault("page_errors", []).append(str(e)))
        started = time.monotonic()
        page.goto(f"{base}/?folder={folder}")
        page.wait_for_selector(".monaco-workbench", timeout=120_000)
        page.keyboard.press("Control+P")
        page.wait_for_selector(".quick-input-widget input", timeout=60_000)
        page.keyboard.type("main.py")
        page.wait_for_selector(".quick-input-list .monaco-list-row", timeout=30_000)
        page.keyboard.press("Enter")
        page.wait_for_selector(".monaco-editor .view-line", timeout=60_000)
        seen["activated_s"] = time.monotonic() - started

        # the status-bar item: every text it showed until ready ($(check) renders as an icon)
        item = page.locator(".statusbar-item:has-text('codehop')").first
        texts: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if item.count():
                text = item.inner_text().strip()
                if not texts or texts[-1] != text:
                    texts.append(text)
                    if "indexing" in text or "loading" in text:
                        page.screenshot(path=str(out / "vscode-progress.png"))
                if text == "codehop" and any(t != "codehop" for t in texts):
                    break
            page.wait_for_timeout(100)
        seen["status_texts"], seen["ready_s"] = texts, time.monotonic() - started

        # hover on slugify (line 1)
        word = page.locator(".view-line span:text-is('slugify')").first
        asked = time.monotonic()
        word.hover()
        hover = page.locator(".monaco-hover-content:has-text('def slugify')").first
        hover.wait_for(timeout=60_000)
        seen["hover_s"] = time.monotonic() - asked
        seen["hover"] = hover.inner_text()[:500]
        page.screenshot(path=str(out / "vscode-hover.png"))
        page.mouse.move(5, 5)

        # inline completion at the end of the file: ghost text
        page.locator(".view-line").last.click()
        page.keyboard.press("Control+End")
        asked = time.monotonic()
        _palette(page, ">Trigger Inline Suggestion")
        page.wait_for_selector(".ghost-text-decoration, .ghost-text", timeout=120_000)
        seen["ghost_s"] = time.monotonic() - asked
        seen["ghost_text"] = "".join(page.locator(".ghost-text-decoration, .ghost-text").all_inner_texts())
        page.screenshot(path=str(out / "vscode-ghost.png"))
        page.keyboard.press("Escape")

        # codehop: Ask, then its panel with the sources
        asked = time.monotonic()
        _palette(page, ">codehop: Ask")
        page.wait_for_selector(".quick-input-widget input", timeout=30_000)
        page.keyboard.type(QUESTION)
        page.keyboard.press("Enter")
        panel = page.frame_locator("iframe.webview.ready").frame_locator("iframe#active-frame")
        panel.locator("ol.sources li").first.wait_for(timeout=300_000)
        seen["ask_s"] = time.monotonic() - asked
        seen["ask_sources"] = panel.locator("ol.sources li").all_inner_texts()
        seen["ask_answer"] = panel.locator(".answer").inner_text()[:500]
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "vscode-ask-panel.png"))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seen: dict = {}
    try:
        drive(args.base, args.folder, args.chromium, args.out, seen)
    except Exception as error:  # reported with what was seen so far
        seen["error"] = f"{type(error).__name__}: {error}"
    (args.out / "result.json").write_text(json.dumps(seen, indent=1))
    print(json.dumps(seen, indent=1))
    return 0 if "error" not in seen else 1


if __name__ == "__main__":
    sys.exit(main())
