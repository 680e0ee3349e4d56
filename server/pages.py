"""The web pages served by the service itself: agent desktop, supervisor console, QA.

Plain HTML + ES modules from ``server/static`` (no build step); the one chart library
(uPlot, pinned in ``web/package.json``) is vendored in ``static/vendor`` by ``make web``.
Pages hold no data of their own: they read the REST API and the websockets with the
token given as ``?token=`` (kept in sessionStorage) or typed into the page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "index.html", "/agent": "agent.html", "/supervisor": "supervisor.html", "/qa": "qa.html"}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                                       "style-src 'self' 'unsafe-inline'; media-src 'self' blob:; frame-ancestors 'self'"}

router = APIRouter(include_in_schema=False)


def _page(name: str):
    async def page() -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=_HEADERS)

    return page


for _path, _name in PAGES.items():
    router.add_api_route(_path, _page(_name), methods=["GET"], name=f"page:{_name.removesuffix('.html')}")


def install(app: FastAPI) -> None:
    """Mount the pages and their static files on ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
