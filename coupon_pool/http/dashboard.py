"""The live dashboard: one page and its two assets, shipped in the package.

The page reads /v1/stats, /v1/levels, /v1/megadeal, /v1/audit and /v1/webhooks from its own origin
every 2 seconds (static/dashboard.js); its Content-Security-Policy lets it reach nothing else. It is
not an API operation, so it is not in /openapi.json. With API keys configured, the page
asks for one and keeps it in the tab's sessionStorage.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def routes(keys_required: bool) -> list[Route]:
    """GET /dashboard and its assets; the page says whether it must ask for a key."""
    folder = files("coupon_pool.http") / "static"
    page = (
        (folder / "index.html").read_bytes().replace(b"{{keys}}", b"required" if keys_required else b"none")
    )

    def serving(content: bytes, media_type: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return Response(content, media_type=media_type, headers=HEADERS)

        return endpoint  # type: ignore[return-value]

    found = [Route("/dashboard", serving(page, "text/html; charset=utf-8"), methods=["GET"])]
    for name, media_type in _ASSETS.items():
        found.append(
            Route(f"/dashboard/{name}", serving((folder / name).read_bytes(), media_type), methods=["GET"])
        )
    return found
