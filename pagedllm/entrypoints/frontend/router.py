"""Routes for the web chat page: `/` and `/static/<name>`, read from the package's static/ folder.

The page is public (the API key is typed into the page and sent by its API calls), so these paths
are outside AuthMiddleware's protected prefixes."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

STATIC_DIR = Path(__file__).resolve().parent / "static"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
# The page loads only its own files and talks only to this server; no inline script or style.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache"}

router = APIRouter()


def _static(name: str) -> Response:
    # Only names listed in the folder are served: no path from the URL reaches the filesystem.
    files = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in _MEDIA_TYPES}
    path = files.get(name)
    if path is None:
        return Response(status_code=404)
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return _static("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    return _static(name)
