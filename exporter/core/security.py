"""Bearer-token authentication for every HTTP and WebSocket route but /health."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PATHS = frozenset({"/health", "/"})
# The built-in dashboard's own files (HTML, script, style, charting library) hold no data, and a
# browser cannot send a bearer token when it loads a page: they are public, the data it asks for
# is not.
PUBLIC_PREFIXES = ("/page/",)
# A browser's WebSocket cannot send an Authorization header, only subprotocols: the page offers
# `nexus.bearer.<token as unpadded base64url>` beside LIVE_SUBPROTOCOL, which the server selects,
# so the token never travels in a URL (and never lands in an access log).
BEARER_SUBPROTOCOL_PREFIX = "nexus.bearer."
LIVE_SUBPROTOCOL = "nexus.live"


def bearer_matches(header: str | None, token: str) -> bool:
    """Constant-time comparison, so response timing does not reveal the token."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def subprotocol_bearer(header: str | None) -> str | None:
    """The `Authorization` value a WebSocket handshake carries in its subprotocols, if any."""
    for offered in (header or "").split(","):
        offered = offered.strip()
        if offered.startswith(BEARER_SUBPROTOCOL_PREFIX):
            encoded = offered.removeprefix(BEARER_SUBPROTOCOL_PREFIX)
            try:
                given = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
                return "Bearer " + given.decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class BearerAuth:
    """Refuses requests without `Authorization: Bearer <token>` with 401 (also the WebSocket
    handshake, as an HTTP 401 denial response)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not is_public(scope["path"]):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            given = headers.get("authorization")
            if scope["type"] == "websocket" and given is None:
                given = subprotocol_bearer(headers.get("sec-websocket-protocol"))
            if not bearer_matches(given, self.token):
                response = JSONResponse(
                    {"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
