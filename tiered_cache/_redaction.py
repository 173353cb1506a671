"""What a secret looks like when it is printed: in the CLI's output and in error messages.

A Redis URL keeps everything but its userinfo and its password options; a secret setting
(``SECRET_KEY``, ``ENDPOINTS_TOKEN``) shows only its length, or its type when it is no
string.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, unquote_plus, urlsplit

_SECRET_WORDS: Final = ("SECRET", "TOKEN", "PASSWORD")


def redacted(url: str) -> str:
    """``url`` without its secrets, fit to print: its whole userinfo (user name too), and
    the value of every query parameter whose name holds "password" (redis-py reads
    ``?password=``, ``?sentinel_password=``...). The rest is kept as it was written.

    A password holding an unencoded '#', '/' or '?' ends urlsplit's netloc inside it: an
    "@" after the host says so, and then everything up to the last "@" is hidden (more
    than the userinfo, never less; so is a unix socket path holding an "@")."""
    hidden = [False] * len(url)
    for start, end in [*_userinfo_span(url), *_query_password_spans(url)]:
        hidden[start:end] = [True] * (end - start)
    return "".join(_shown_runs(url, hidden))


def _userinfo_span(url: str) -> list[tuple[int, int]]:
    """Where the userinfo lies: the netloc's, up to its last "@", when no "@" comes after
    the netloc; else (a password holding '/', '?' or '#' cut the netloc short, or a
    unix socket's path or a query value holds one) everything from "://" to the last
    "@": more than the userinfo, never less."""
    start = url.find("://") + 3
    if start < 3:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urlsplit reads ("redis://[::1"): the last "@" rule
        parts = None
    end = url.rfind("@")
    # The netloc's own "@" only when no "@" follows it at all (a query value's included:
    # "?" in a password ends the netloc too) and urlsplit dropped nothing from it (it
    # deletes tabs and line breaks, which would shift every offset after them).
    whole = parts is not None and not any(c in url for c in "\t\r\n")
    if parts is not None and whole and "@" not in url[start + len(parts.netloc) :]:
        end = start + parts.netloc.rfind("@")
    return [(start, end)] if end > start else []


def at_past_host(parts: SplitResult, *, in_path: bool) -> bool:
    """Whether an "@" comes after the host (in the path when ``in_path``, the fragment or
    a query option's name): the mark of a password holding an unencoded '/', '?' or '#',
    which ends urlsplit's netloc inside it. An "@" in a query value is no such mark."""
    names = [field.partition("=")[0] for field in parts.query.split("&")]
    path = parts.path if in_path else ""
    return any("@" in text for text in (path, parts.fragment, *names))


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
