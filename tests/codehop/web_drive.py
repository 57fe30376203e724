"""Run by test_rest_web.py inside a closed network namespace (`unshare -n`): brings loopback up,
starts `codehop serve` there, and drives Debian's headless Chromium (playwright) through
`/` (index status, a search, an ask), `/docs` and `/redoc`. Writes what the page rendered,
every URL the browser requested, and screenshots to --out.

    unshare -n python tests/codehop/web_drive.py --config codehop.toml --workspace WS \
        --source DIR --chromium /usr/bin/chromium --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SEARCH = "reciprocal rank fusion"
QUESTION = "How are index writes made atomic?"


def network_closed() -> bool:
    """True when nothing but loopback is reachable (no route to a public address)."""
    try:
        with socket.create_connection(("1.1.1.1", 443), timeout=3):
            return False
    except OSError:
        return True


def wait_for(url: str, server: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"codehop serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def drive(base: str, chromium: str, out: Path, seen: dict) -> None:
    """Fills `seen` as it goes (what was seen so far survives a failure)."""
    from playwright.sync_api import sync_playwright

    seen["requests"] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"], headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("console", lambda m: seen.setdefault("console", []).append(f"{m.type}: {m.text}"))
        page.on("requestfailed", lambda r: seen.setdefault("failed", {}).__setitem__(r.url, r.failure))
        page.on("pageerror", lambda e: seen.setdefault("page_errors", []).append(str(e)))

        page.goto(f"{base}/")
        page.wait_for_selector("#collections tr td:has-text('docs')", timeout=60_000)
        seen["collections"] = page.inner_text("#collections")
        page.wait_for_selector("#health:has-text('workspace')", timeout=60_000)  # /health may answer after /v1/collections
        seen["health"] = page.inner_text("#health")
        page.wait_for_selector("#indexing li:has-text('docs: done')", timeout=120_000)  # polled until done
        page.wait_for_selector("#indexing li:has-text('model: ready')", timeout=240_000)  # and the warm start
        seen["indexing_done"] = page.inner_text("#indexing")

        page.fill("#search-query", SEARCH)
        page.click("#search-form button")
        page.wait_for_selector("#search-results li", timeout=60_000)
        seen["search_info"] = page.inner_text("#search-info")
        seen["search_results"] = page.locator("#search-results li .where").all_inner_texts()
        seen["search_first_text"] = page.inner_text("#search-results li pre >> nth=0")

        page.fill("#ask-query", QUESTION)
        page.click("#ask-form button")
        page.wait_for_selector("#ask-sources li", timeout=240_000)
        seen["answer"] = page.inner_text("#ask-answer")
        seen["ask_sources"] = page.locator("#ask-sources li .where").all_inner_texts()
        seen["ask_stages"] = page.inner_text("#ask-stages")
        seen["ask_notes"] = page.inner_text("#ask-notes")
        page.screenshot(path=str(out / "web.png"), full_page=True)

        # The page mid-indexing: this server's own /health with its status as a server reports
        # it 42% into the embedding (a small folder indexes too fast to catch it live).
        health = page.request.get(f"{base}/health").json()
        done = health["indexing"]["docs"]
        health["indexing"]["docs"] = {**done, "state": "embedding", "chunks_total": 3400, "chunks_done": 1428,
                                      "rate_chunks_per_s": 41.5, "eta_s": 47.2, "dense_fraction": 0.42}
        page.route("**/health", lambda route: route.fulfill(json=health))
        page.reload()
        page.wait_for_selector("#indexing li:has-text('embedding')", timeout=30_000)
        seen["indexing_mid"] = page.inner_text("#indexing")
        seen["indexing_bar"] = page.get_attribute("#indexing li:has-text('docs:') progress", "value")

        # An answer given then: the server's own answer, marked as given on 42% of the vectors.
        def partial(route) -> None:
            response = route.fetch(timeout=300_000)  # a real model answers in minutes on 2 cores
            route.fulfill(response=response, json={**response.json(), "partial": {"dense": 0.42}})

        page.route("**/v1/ask", partial)
        page.fill("#ask-query", QUESTION)
        page.click("#ask-form button")
        page.wait_for_selector("#ask-notes p:has-text('Answered while indexing')", timeout=240_000)
        seen["ask_notes_partial"] = page.inner_text("#ask-notes")
        page.screenshot(path=str(out / "web-indexing.png"), full_page=True)
        page.unroute("**/health")
        page.unroute("**/v1/ask")
        page.click("#bench-details summary")
        page.wait_for_function("document.getElementById('bench-text').textContent.length > 50")
        seen["benchmarks"] = page.inner_text("#bench-text")[:400]

        page.goto(f"{base}/docs")
        page.wait_for_selector(".opblock", timeout=60_000)
        seen["docs_operations"] = page.locator(".opblock-summary-path").all_inner_texts()
        seen["docs_title"] = page.inner_text(".information-container .title")
        page.screenshot(path=str(out / "docs.png"))

        page.goto(f"{base}/redoc")
        page.wait_for_selector("h1:has-text('codehop')", timeout=60_000)
        seen["redoc_text"] = page.inner_text("body")[:2000]
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    result: dict = {"network_closed": network_closed()}
    log = open(args.out / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "codehop", "--config", args.config, "serve", "--workspace", args.workspace,
         "--source", args.source, "--collection", "docs", "--port", str(args.port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=args.source, env=os.environ)
    try:
        base = f"http://127.0.0.1:{args.port}"
        wait_for(f"{base}/health", server)
        drive(base, args.chromium, args.out, result)
    except Exception as error:  # reported to the test, with the server's log
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        server.terminate()
        server.wait(30)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
