"""Bounded JSON POSTs for the engine's outbound HTTP calls (LLM summarizers, token-count APIs).

One place decides how a call to a provider is bounded: a total deadline checked while the body is
read (httpx's timeouts bound each network wait, not the whole call), a cap on the reply size, and
URLs shown without user info. Callers translate :class:`HttpCallError` into their own error type
and quote a provider's text through :func:`error_excerpt`, which removes any secret they sent.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

__all__ = ["ERROR_EXCERPT_CHARS", "HttpCallError", "error_excerpt", "post_json_bounded", "safe_url"]

ERROR_EXCERPT_CHARS = 200
"""How much of a provider's error body an error message quotes."""
SCRUBBED = "**********"


class HttpCallError(Exception):
    """The call failed before a complete reply arrived (transport error, timeout, too large)."""


def safe_url(url: str) -> str:
    """``url`` without user info (``https://user:secret@host`` -> ``https://host``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def error_excerpt(
    text: str, secret: str | None, limit_chars: int | None = ERROR_EXCERPT_CHARS
) -> str:
    """At most ``limit_chars`` of ``text`` (all of it for ``None``), an error body or an
    exception's text, with every occurrence of ``secret`` replaced by ``**********``.

    The secret is removed *before* the text is cut: cutting first would leave the part of a secret
    that straddles the cut, which no longer matches the whole secret, in clear.
    """
    if secret:
        text = text.replace(secret, SCRUBBED)
    return text if limit_chars is None else text[:limit_chars]


def post_json_bounded(
    client: httpx.Client,
    url: str,
    *,
    body: Any,
    headers: dict[str, str],
    timeout_s: float,
    max_bytes: int,
) -> tuple[int, str]:
    """POST ``body`` as JSON; return ``(status, reply text)`` or raise :class:`HttpCallError`.

    The whole call, reading included, ends within ``timeout_s``; a reply over ``max_bytes`` is
    refused. The error text names the URL without credentials.
    """
    where = safe_url(url)
    deadline = time.monotonic() + timeout_s
    try:
        with client.stream("POST", url, json=body, headers=headers) as resp:
            raw = bytearray()
            for chunk in resp.iter_bytes():
                raw += chunk
                if len(raw) > max_bytes:
                    raise HttpCallError(f"response from {where} exceeds {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise HttpCallError(f"{where} did not finish within {timeout_s:g}s")
            status = resp.status_code
    except httpx.TimeoutException as exc:
        raise HttpCallError(
            f"timed out after {timeout_s:g}s calling {where} ({type(exc).__name__})"
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise HttpCallError(f"request to {where} failed: {type(exc).__name__}: {exc}") from exc
    return status, bytes(raw).decode("utf-8", errors="replace")
