"""What a secret looks like when it is printed: in the CLI's output and in error messages.

A Redis URL keeps everything but its passwords; a secret setting (``SECRET_KEY``,
``ENDPOINTS_TOKEN``) shows only its length.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus, urlsplit

_SECRET_WORDS: Final = ("SECRET", "TOKEN", "PASSWORD")


def redacted(url: str) -> str:
    """``url`` without its passwords, fit to print: the userinfo's, and the value of every
    query parameter whose name holds "password" (redis-py reads ``?password=``,
    ``?sentinel_password=``...). The rest is kept as it was written."""
    head, question, query = url.partition("?")  # not urlunsplit: it turns unix:/// into unix:/
    try:
        password = urlsplit(head).password
    except ValueError:  # not a URL urlsplit can read ("http://[::1"): hide all but the scheme
        return head.partition("://")[0] + "://***"
    if password:
        head = head.replace(f":{password}@", ":***@", 1)
    return head + question + "&".join(_masked(field) for field in query.split("&"))


def _masked(field: str) -> str:
    """One ``name=value`` of a query, its value masked when the name holds "password"."""
    name, equals, _ = field.partition("=")
    return f"{name}=***" if equals and "password" in unquote_plus(name).lower() else field


def shown(key: str, value: object) -> str:
    """``value`` of the setting ``key`` as an error message may print it."""
    if isinstance(value, str | bytes) and value:
        if key.upper().endswith("REDIS_URL"):
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            return repr(redacted(text))
        if any(word in key.upper() for word in _SECRET_WORDS):
            return f"<{len(value)} characters, not shown>"
    return repr(value)
