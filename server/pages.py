"""The web pages served by the service itself: agent desktop, supervisor console, QA, and /docs.

Plain HTML + ES modules from ``server/static`` (no build step); the browser libraries
(uPlot for charts, Swagger UI for ``/docs``; pinned in ``web/package.json``) are vendored
in ``static/vendor`` by ``make web``.  Pages hold no data of their own: they read the
REST API with the bearer token and open websockets with single-use tickets
(``POST /v1/ws-ticket``).  The token reaches a page in the URL *fragment*
(``/agent#token=...``, which browsers never send to a server) or is typed into the
page; either way it is kept in sessionStorage.  Security headers (CSP, frame and
sniffing rules) come from :mod:`calltone.server.security` for every HTML response.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "index.html", "/agent": "agent.html", "/supervisor": "supervisor.html", "/qa": "qa.html", "/ops": "ops.html",
         "/docs": "docs.html"}
_HEADERS = {"Cache-Control": "no-cache"}

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
