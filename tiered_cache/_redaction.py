"""What a secret looks like when it is printed: in the CLI's output and in error messages.

A Redis URL keeps everything but its userinfo and its password options; a secret setting
(``SECRET_KEY``, ``ENDPOINTS_TOKEN``) shows only its length, or its type when it is no
string.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus

_SECRET_WORDS: Final = ("SECRET", "TOKEN", "PASSWORD")


def redacted(url: str) -> str:
    """``url`` without its secrets, fit to print: its whole userinfo (user name too), and
    the value of every query parameter whose name holds "password" (redis-py reads
    ``?password=``, ``?sentinel_password=``...). The rest is kept as it was written.

    The userinfo is everything between "://" and the last "@", not what urlsplit reads:
    a password holding an unencoded '#', '/' or '?' ends urlsplit's netloc inside it.
    An "@" in a query value then hides more than the userinfo, never less."""
    hidden = [False] * len(url)
    for start, end in [*_userinfo_span(url), *_query_password_spans(url)]:
        hidden[start:end] = [True] * (end - start)
    return "".join(_shown_runs(url, hidden))


def _userinfo_span(url: str) -> list[tuple[int, int]]:
    """Where the userinfo lies: from "://" to the last "@" (none when there is no "@")."""
    start, end = url.find("://") + 3, url.rfind("@")
    return [(start, end)] if start >= 3 and end > start else []


def _query_password_spans(url: str) -> list[tuple[int, int]]:
    """Where the values of the query's password parameters lie."""
    spans, offset = [], url.find("?") + 1
    if not offset:
        return []
    for field in url[offset:].split("&"):
        name, equals, value = field.partition("=")
        if equals and "password" in unquote_plus(name).lower():
            start = offset + len(name) + 1
            spans.append((start, start + len(value)))
        offset += len(field) + 1
    return spans


def _shown_runs(url: str, hidden: list[bool]) -> list[str]:
    """``url`` with each run of hidden characters replaced by one "***"."""
    parts: list[str] = []
    for index, char in enumerate(url):
        if not hidden[index]:
            parts.append(char)
        elif index == 0 or not hidden[index - 1]:
            parts.append("***")
    return parts


def shown(key: str, value: object) -> str:
    """``value`` of the setting ``key`` as an error message may print it: a Redis URL
    redacted, a secret setting never (its length, or its type when it is no string), as
    is a Redis URL that is no string (a list of URLs would print their passwords)."""
    upper = key.upper()
    secret = any(word in upper for word in _SECRET_WORDS)
    if not secret and not upper.endswith("REDIS_URL"):
        return repr(value)
    if not isinstance(value, str | bytes):
        return f"<{type(value).__name__}, not shown>"
    if secret and value:  # an empty one tells nothing
        return f"<{len(value)} characters, not shown>"
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return repr(redacted(text))
