"""``Authorization: Bearer TOKEN`` checked in constant time, shared by the edge and
``ondevice serve``.

aiohttp hands header bytes that are not UTF-8 over as surrogate escapes: encoded back they are
the bytes sent, which are never the (UTF-8) token. Nothing here raises on any header value.
"""

from __future__ import annotations

import hmac


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization`` header value (``Bearer`` in any case), else None."""
    scheme, _, given = header.strip().partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison of a header's token with ours."""
    try:
        raw = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no decoder of header bytes produces
        return False
    return hmac.compare_digest(raw, token.encode("utf-8"))


def authorized(header: str, token: str) -> bool:
    """True when the ``Authorization`` header value carries ``token`` as a bearer token."""
    given = bearer_token(header)
    return given is not None and token_matches(given, token)
