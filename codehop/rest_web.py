"""The pages a person opens in a browser, served from files shipped with the packages (no CDN).

- `/`: codehop/web/ (plain HTML, one script, one stylesheet; no build step): index status,
  search, ask with sources, the latest benchmark summary. It calls the public REST endpoints.
- `/docs` and `/redoc`: Swagger UI and ReDoc from the bundles that the `fastapi-offline`
  package ships (Swagger UI: Apache-2.0, ReDoc: MIT; their licence notes are in that
  package's metadata), so the API reference loads on a machine with no network.
- `/benchmarks.md`: docs/benchmarks.md of the checkout, as text (404 when not installed from
  a checkout).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from runtime.errors import MissingDependencyError, NotFoundError

WEB = Path(__file__).resolve().parent / "web"
# The pages may load only what this server serves: ReDoc's bundle, for one, links a logo on a
# CDN in its sidebar; the browser blocks it (and the <img> hides itself) instead of asking out.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
       "connect-src 'self'; frame-ancestors 'self'")
BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _docs_assets() -> Path:
    try:
        import fastapi_offline
    except ImportError as error:
        raise MissingDependencyError(
            "the offline /docs need the fastapi-offline package: pip install fastapi-offline==1.7.7 "
            "(bash scripts/setup.sh installs it)") from error
    return Path(fastapi_offline.__file__).resolve().parent / "static"


def _local_only(response: HTMLResponse) -> HTMLResponse:
    response.headers["content-security-policy"] = CSP
    return response


def mount_pages(app: FastAPI) -> None:
    """Adds `/`, `/docs`, `/redoc` and `/benchmarks.md` to `app` (created with docs_url=None)."""
    assets = _docs_assets()
    app.mount("/static/web", StaticFiles(directory=WEB), name="web")
    app.mount("/static/docs", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html",
                            headers={"content-security-policy": CSP})

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return _local_only(get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - API",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon.png",
            # no badge from the public validator service: nothing leaves the machine
            swagger_ui_parameters={"validatorUrl": None}))

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _local_only(get_redoc_html(
            openapi_url=app.openapi_url, title=f"{app.title} - API",
            redoc_js_url="/static/docs/redoc.standalone.js",
            redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False))

    @app.get("/benchmarks.md", include_in_schema=False)
    def benchmarks() -> PlainTextResponse:
        if not BENCHMARKS.is_file():
            raise NotFoundError("docs/benchmarks.md is not here: the benchmark summary is served "
                                "from a source checkout (pip install -e .)")
        return PlainTextResponse(BENCHMARKS.read_text(encoding="utf-8"),
                                 media_type="text/markdown; charset=utf-8")
