"""The dashboard's security rules: response headers on everything, a token for dump downloads.

Dumps hold guest secrets (the whole guest memory), so downloading one needs the token from
``[web] token_file``, compared in constant time. Every other page and API call is read-only.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcrash.errors import ConfigError

__all__ = ["SECURITY_HEADERS", "SecurityHeaders", "load_token", "token_matches"]

#: No script at all (the pages need none), no inline style, nothing from elsewhere, no framing.
CSP = ("default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
_MIN_TOKEN_BYTES = 16
_MAX_TOKEN_BYTES = 4096


class SecurityHeaders:
    """ASGI middleware: adds :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in SECURITY_HEADERS if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def load_token(path: str | os.PathLike[str]) -> bytes:
    """The download token: the file's content without surrounding whitespace.

    :raises ConfigError: unreadable, readable by group or others, shorter than 16 bytes or longer
        than 4096 bytes.
    """
    p = Path(path)
    try:
        st = p.stat()
        raw = p.read_bytes()[:_MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read token file: {exc.strerror}", path=str(p), key="web.token_file") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"token file is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          "chmod 600 it", path=str(p), key="web.token_file")
    token = raw.strip()
    if not _MIN_TOKEN_BYTES <= len(token) <= _MAX_TOKEN_BYTES:
        raise ConfigError(f"token must be {_MIN_TOKEN_BYTES} to {_MAX_TOKEN_BYTES} bytes", path=str(p),
                          key="web.token_file")
    return token


def token_matches(expected: bytes | None, offered: str | bytes | None) -> bool:
    """Whether ``offered`` is the token, compared in constant time; never true without a token."""
    if not expected or offered is None:
        return False
    got = offered.encode("utf-8", "replace") if isinstance(offered, str) else offered
    return hmac.compare_digest(expected, got.strip())
