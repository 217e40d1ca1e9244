"""The service's own pages, in place of BentoML's index page (which loads Google Tag Manager):

    GET /              the operator page (page/index.html): drop a tile, see the overlay and the answer
    GET /ui/<file>     its script and style sheet (page/app.js, page/style.css)
    GET /docs          the OpenAPI UI: the Swagger UI that ships inside the bentoml package, served
                       from here (/docs/assets/...), reading /docs.json, without BentoML's tracker

Every answer carries a Content-Security-Policy that allows this origin only (plus blob:/data:
images), so even a future edit that links a CDN would be blocked by the browser. The routes are
GET/HEAD only and outside the API guard's paths: no API key is needed to load a page.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parent / "page"
UI_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}

# Same origin only. 'unsafe-inline' styles on /docs: Swagger UI sets style attributes.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'self'"
)
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'self'"
)
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def swagger_assets() -> Path | None:
    """The Swagger UI files bundled with bentoml (the ones its own index page uses), if present."""
    try:
        from bentoml._internal import server
    except ImportError:
        return None
    folder = Path(server.__file__).resolve().parent / "static_content"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _file(path: Path, media_type: str, csp: str) -> Response:
    if not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(
        path, media_type=media_type, headers={**COMMON_HEADERS, "Content-Security-Policy": csp}
    )


async def operator_page(_: Request) -> Response:
    return _file(PAGE_DIR / "index.html", "text/html; charset=utf-8", PAGE_CSP)


async def ui_file(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in UI_FILES:  # a fixed list: nothing else under page/ (or above it) is served
        return Response("not found", status_code=404, media_type="text/plain")
    return _file(PAGE_DIR / name, UI_FILES[name], PAGE_CSP)


async def docs_page(_: Request) -> Response:
    if swagger_assets() is None:
        return Response("OpenAPI UI not available: read /docs.json", status_code=404, media_type="text/plain")
    return _file(PAGE_DIR / "docs.html", "text/html; charset=utf-8", DOCS_CSP)


async def docs_init(_: Request) -> Response:
    return _file(PAGE_DIR / "docs.js", "text/javascript; charset=utf-8", DOCS_CSP)


def page_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/", operator_page, methods=["GET", "HEAD"]),
        Route("/ui/{name}", ui_file, methods=["GET", "HEAD"]),
        Route("/docs", docs_page, methods=["GET", "HEAD"]),
        Route("/docs/init.js", docs_init, methods=["GET", "HEAD"]),
    ]
    assets = swagger_assets()
    if assets is not None:
        routes.append(Mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets"))
    return routes
