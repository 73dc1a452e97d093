"""Base URLs: checked before play, and shown or recorded without credentials.

Standard library only, and below everything that takes a URL (the run spec, the model endpoints).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlparse, urlunparse

from atari_vlm.errors import ConfigError

__all__ = ["safe_url", "split_query", "validate_base_url"]


def validate_base_url(url: str, *, what: str = "--base-url") -> str:
    """``url`` without a trailing slash if it is an http(s) URL with a host; a ConfigError saying what
    is wrong and what would be right otherwise (before any request is made)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(
            f"{what} must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1; got {url!r}"
        )
    text = url.strip()
    if any(ch.isspace() for ch in text):
        raise ConfigError(f"{what} must not contain spaces; got {safe_url(text)!r}")
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"{what} must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/v1; "
            f"got {safe_url(text)!r}"
        )
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(f"{what} has a port that is not a number in 1-65535: {safe_url(text)!r}") from None
    if not parsed.hostname or (port is not None and not 0 < port < 65536):
        raise ConfigError(f"{what} needs a host name (and a port in 1-65535); got {safe_url(text)!r}")
    if "@" in parsed.netloc:
        raise ConfigError(
            f"{what} must not hold a user name or password (they would travel in every request and "
            f"into logs); got {safe_url(text)!r}: pass the key in the provider's environment variable "
            "(OPENAI_API_KEY, ...) instead"
        )
    return text.rstrip("/")


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its query and fragment, and the query's parameters (sent with every request
    as the SDK's default query: a base URL's own query would be mangled when paths are joined)."""
    parsed = urlparse(url)
    query = dict(parse_qsl(parsed.query, keep_blank_values=True))
    bare = urlunparse((parsed.scheme, parsed.netloc, parsed.path, "", "", "")).rstrip("/")
    return bare, query


def safe_url(url: str | None) -> str:
    """``url`` with any user, password, query and fragment removed: what may be shown or recorded."""
    if not url:
        return ""
    try:
        parsed = urlparse(url)
        host = parsed.hostname or ""
        port = parsed.port
    except ValueError:
        return "<unparsable URL>"
    if not parsed.scheme or not host:
        return url.split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunparse((parsed.scheme, netloc, parsed.path, "", "", ""))
