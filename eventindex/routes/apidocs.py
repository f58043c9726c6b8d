"""The interactive API docs: Swagger UI at /docs, served by the service itself. Its code comes
with the fastapi-offline package, nothing from a CDN, so it works on a closed network; the
page runs no inline script, so it is served under the same Content-Security-Policy as the
web page (middleware/secheaders.py).

ReDoc (FastAPI's /redoc) is not served: it writes its styles inline, runs its search in a
worker made from a blob, and loads its logo from its vendor's CDN, none of which that policy
allows. /redoc leads to /docs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException

ASSETS = "/docs/assets/"
_OWN = Path(__file__).resolve().parent.parent / "apidocs"

_SWAGGER_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>EventIndex API - Swagger UI</title>
<link rel="stylesheet" href="{ASSETS}swagger-ui.css">
<link rel="icon" href="{ASSETS}favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}swagger-ui-bundle.js"></script>
<script src="{ASSETS}swagger-init.js"></script>
</body>
</html>
"""


def _asset_files() -> dict[str, Path]:
    """The files the page loads, by name: the package's Swagger UI, and its start-up."""
    import fastapi_offline

    package = Path(fastapi_offline.__file__).resolve().parent / "static"
    files = {name: package / name for name in ("swagger-ui-bundle.js", "swagger-ui.css")}
    files["favicon.png"] = package / "favicon.png"
    files["swagger-init.js"] = _OWN / "swagger-init.js"
    return files


def mount(app: FastAPI) -> None:
    files = _asset_files()
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise RuntimeError(f"the API docs' files are missing: {', '.join(missing)}")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(_SWAGGER_PAGE, headers={"Cache-Control": "no-cache"})

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> RedirectResponse:
        return RedirectResponse("/docs", status_code=308)

    @app.get(ASSETS + "{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        path = files.get(name)  # only the files named above: no path from the request
        if path is None:
            raise HTTPException(404, "Not Found")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})
