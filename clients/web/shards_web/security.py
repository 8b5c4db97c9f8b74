"""The browser-facing rules: security headers, CSRF, the token cookie, JSON errors.

- Every response carries a Content-Security-Policy of ``default-src 'self'``
  (no inline script, no other origin) with ``frame-ancestors 'none'``.
- A changing request is a POST with the ``X-Shards-Request`` header (which a
  cross-site form cannot send, and a cross-site script cannot without a CORS
  preflight this server never answers) and, when the browser says where it
  comes from (``Origin``, ``Sec-Fetch-Site``), from this origin only.
- The token lives in an HttpOnly, SameSite=Strict cookie (Secure over HTTPS);
  an ``Authorization: Bearer`` header works too, for scripts.
- Errors are JSON (``errors``); an unexpected one is logged here and answered
  500 with no detail.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from shards.errors import ShardsError
from shards_web.errors import ApiError, from_api_error, from_shards_error, json_error

log = logging.getLogger(__name__)

COOKIE = "shards_token"
CSRF_HEADER = "X-Shards-Request"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SAFE_METHODS = ("GET", "HEAD")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_of(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return request.cookies.get(COOKIE, "")


def set_token_cookie(response: web.StreamResponse, token: str, secure: bool) -> None:
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/")


def clear_token_cookie(response: web.StreamResponse, secure: bool) -> None:
    response.del_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Strict")


def _origin_of(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def check_csrf(request: web.Request) -> None:
    if request.headers.get(CSRF_HEADER) != "1":
        raise ApiError(403, f"a changing request needs the header {CSRF_HEADER}: 1", "CSRF_REFUSED")
    origin = request.headers.get("Origin")
    if origin is not None and origin != _origin_of(request):
        raise ApiError(403, f"a request from another origin ({origin}) is refused", "CSRF_REFUSED")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise ApiError(403, f"a {site} request is refused", "CSRF_REFUSED")


def make_middleware() -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.method not in SAFE_METHODS:
                if request.method != "POST":
                    raise ApiError(405, f"method {request.method} is not allowed", "METHOD_NOT_ALLOWED")
                check_csrf(request)
            return await handler(request)
        except ShardsError as error:
            return from_shards_error(error)
        except ApiError as error:
            return from_api_error(error)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "REQUEST_TOO_LARGE"}.get(
                error.status, "BAD_REQUEST"
            )
            message = "the request body is too large" if error.status == 413 else error.reason
            return json_error(error.status, code, message)
        except Exception:
            log.exception("internal error answering %s %s", request.method, request.path)
            return json_error(500, "INTERNAL", "internal error in the GUI server (its log has the details)")

    return guard


def add_headers(tls: bool) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers["Content-Security-Policy"] = CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        if request.path.startswith("/api/"):
            headers.setdefault("Cache-Control", "no-store")
        if tls:
            headers["Strict-Transport-Security"] = "max-age=31536000"

    return on_prepare
