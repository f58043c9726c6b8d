"""The web page: static files served by the service itself (no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_REVALIDATE = {"Cache-Control": "no-cache"}


def mount(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=_REVALIDATE)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # Browsers ask for /favicon.ico on pages that name no icon (JSON answers, the API
        # docs): the page's own icon, rather than a 404 on every visit.
        return FileResponse(
            WEB_DIR / "favicon.svg",
            media_type="image/svg+xml",
            headers={"Cache-Control": "max-age=86400"},
        )

    @app.get("/download-worker.js", include_in_schema=False)
    async def download_worker() -> FileResponse:
        # At the root, so that its scope covers the /download/ URLs the page opens: it adds
        # the page's token to a streamed download, which a plain link cannot carry.
        return FileResponse(
            WEB_DIR / "download-worker.js", media_type="text/javascript", headers=_REVALIDATE
        )
