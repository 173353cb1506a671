"""HTTP caching helpers for Flask views: ``Cache-Control``, ``ETag``, ``Last-Modified``, ``Vary``.

Decorators for any view, cached or not, built on werkzeug (``ResponseCacheControl``,
``ETags``, ``HeaderSet``, ``generate_etag``, ``is_resource_modified``,
``Response.make_conditional``); no header is parsed here by hand. Each decorator keeps
the view's parameters (``ParamSpec``), accepts whatever a Flask view may return (a
:class:`~flask.Response`, ``str``, ``dict``, tuple, or an ``async`` view) and returns a
:class:`~flask.Response`. Views run with their arguments, as Flask passes them.

Stacking. Decorators apply bottom-up, so the one nearest the ``def`` sees the view's own
return value and the top one sees everything. The order that makes sense::

    @app.route("/doc/<int:doc_id>", methods=["GET", "PUT"])
    @tc.cached(60)                          # outermost: a hit skips everything below
    @cache_control(public=True, max_age=60) # headers next, so they are part of what the
    @vary("Accept-Language")                #   cache stores, and every 304 carries them
    @last_modified(doc_updated)             # date check before the work below
    @etag                                   # innermost: tags the view's body
    def doc(doc_id: int) -> ResponseReturnValue: ...

- :func:`cache_control`, :func:`no_store` and :func:`vary` go *below* ``@tc.cached``:
  the cache must see ``Vary`` (to keep variants apart) and ``private``/``no-store`` (to
  refuse storing) on the response it decides about. Above :func:`last_modified` and
  :func:`etag`, their headers also land on the 304s those answer early.
- ``@tc.cached`` already gives stored pages a strong ETag and answers ``If-None-Match``
  from the cache, so :func:`etag` is for views that are not cached (under
  ``@tc.cached`` it tags the misses, and a tag already set is kept).
- A 304 that a helper answers early is not a 200, so ``@tc.cached`` with its default
  ``status_codes`` does not store it.

Preconditions follow RFC 9110 section 13.2.2: ``If-Match`` (strong comparison), else
``If-Unmodified-Since``; then ``If-None-Match`` (weak comparison; 304 for GET/HEAD, 412
otherwise), else ``If-Modified-Since`` for GET/HEAD. They apply to 2xx responses only,
and never to streamed ones, whose body is not read. The dates are weighed by
:func:`last_modified`, which knows the resource's date before the view runs; :func:`etag`
alone weighs only the tags (a date a view sets itself is known too late for a write).
Both answer for the resource as ``fn`` or ``current`` describe it: they must return None
for a requester who may not see it, or a 304 would tell that requester it exists.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, ParamSpec, Protocol, overload

from flask import Flask, Response, current_app, make_response, request
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import Headers, ResponseCacheControl
from werkzeug.exceptions import HTTPException, MethodNotAllowed, PreconditionFailed
from werkzeug.http import (
    dump_header,
    generate_etag,
    http_date,
    is_resource_modified,
    parse_date,
    parse_dict_header,
    parse_list_header,
)

__all__ = ["cache_control", "etag", "last_modified", "no_store", "vary"]

P = ParamSpec("P")

View = Callable[P, ResponseReturnValue | Awaitable[ResponseReturnValue]]
"""A Flask view: what Flask accepts as a view function, sync or async."""


class ViewDecorator(Protocol):
    """What the decorator factories return: generic in the view's parameters."""

    def __call__(self, view: View[P], /) -> Callable[P, Response]: ...


class BoundViewDecorator(Protocol[P]):
    """A decorator for views of given parameters (those of ``last_modified``'s ``fn``)."""

    def __call__(self, view: View[P], /) -> Callable[P, Response]: ...


_READS: Final = frozenset({"GET", "HEAD"})

# Directive -> kind, for werkzeug's ResponseCacheControl properties: "seconds" take a
# non-negative int, "flag" a bool, "fields" True or a string of header names.
_DIRECTIVES: Final[dict[str, str]] = {
    "public": "flag",
    "private": "fields",
    "no_cache": "fields",
    "no_store": "flag",
    "no_transform": "flag",
    "must_revalidate": "flag",
    "proxy_revalidate": "flag",
    "must_understand": "flag",
    "immutable": "flag",
    "max_age": "seconds",
    "s_maxage": "seconds",
    "stale_while_revalidate": "seconds",
    "stale_if_error": "seconds",
}

# An HTTP field name (RFC 9110 token), or "*".
_FIELD_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_field_name(name: object) -> bool:
    """Whether ``name`` is one HTTP field name (a token, RFC 9110 section 5.1), such as
    ``"Accept-Language"``: not ``"Accept, Cookie"``, nor one with spaces around it."""
    return isinstance(name, str) and _FIELD_NAME.fullmatch(name) is not None


# Request headers that would make the internal GET of a precondition check conditional
# or give it a body; see _representation_tag.
_NOT_FOR_GET: Final = (
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_IF_RANGE",
    "HTTP_RANGE",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_TRANSFER_ENCODING",
)


# -- Cache-Control ---------------------------------------------------------------------


def cache_control(**directives: bool | int | str | None) -> ViewDecorator:
    """Set ``Cache-Control`` directives on the view's responses.

    Names are werkzeug's :class:`~werkzeug.datastructures.ResponseCacheControl`
    properties (``max_age=60`` renders ``max-age=60``); they render in the order given.
    ``None`` or ``False`` leaves a directive out. Directives the view's response already
    carries win over the decorator's (the view knows that response best), and
    ``public`` is dropped from a response that ends up ``private`` or ``no-store``: the
    restrictive directive always wins, so a personal page is never made shareable.

    :param directives: ``public``, ``private`` (``True`` or field names),
        ``no_cache`` (likewise), ``no_store``, ``no_transform``, ``must_revalidate``,
        ``proxy_revalidate``, ``must_understand``, ``immutable`` (bools) and ``max_age``,
        ``s_maxage``, ``stale_while_revalidate``, ``stale_if_error`` (seconds).
    :returns: the decorator.
    :raises TypeError: at decoration time, for an unknown directive (named) or a value
        of the wrong type.
    :raises ValueError: for negative seconds, or ``public`` with ``private``/``no_store``.
    """
    template = _directives(directives)

    def decorate(view: View[P]) -> Callable[P, Response]:
        return _after(view, lambda response: _merge_cache_control(response, template))

    return decorate


@overload
def no_store(view: View[P], /) -> Callable[P, Response]: ...
@overload
def no_store(view: None = None, /) -> ViewDecorator: ...
def no_store(view: View[P] | None = None, /) -> Callable[P, Response] | ViewDecorator:
    """Mark the view's responses ``Cache-Control: no-store, private``: no cache keeps them.

    Usable bare (``@no_store``) or called (``@no_store()``). Any ``public`` the view set
    is dropped (see :func:`cache_control`).

    :param view: the view, when used bare.
    :returns: the decorated view, or the decorator.
    """
    decorator: ViewDecorator = cache_control(no_store=True, private=True)
    return decorator if view is None else decorator(view)


def _directives(directives: dict[str, bool | int | str | None]) -> ResponseCacheControl:
    """Validate ``cache_control``'s keywords into a werkzeug ``ResponseCacheControl``."""
    template = ResponseCacheControl()
    for name, value in directives.items():
        if value is None or value is False:
            continue
        _check_directive(name, value)
        setattr(template, name, value)
    if template.public and (template.private or template.no_store):
        raise ValueError("cache_control(): 'public' contradicts 'private' and 'no_store'")
    return template


def _check_directive(name: str, value: bool | int | str) -> None:
    """Raise for an unknown directive or a value its kind does not take."""
    kind = _DIRECTIVES.get(name)
    if kind is None:
        known = ", ".join(sorted(_DIRECTIVES))
        raise TypeError(f"cache_control() got an unknown directive {name!r} (known: {known})")
    if kind == "seconds":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"cache_control({name}=...) takes whole seconds, not {value!r}")
        if value < 0:
            raise ValueError(f"cache_control({name}=...) must not be negative: {value!r}")
    elif kind == "flag" and value is not True:
        raise TypeError(f"cache_control({name}=...) takes True or False, not {value!r}")
    elif kind == "fields" and not (value is True or (isinstance(value, str) and value)):
        raise TypeError(f"cache_control({name}=...) takes True or field names, not {value!r}")


def one_line(headers: Headers, name: str) -> None:
    """Join several ``name`` lines into one (RFC 9110 5.3: they are one list).

    werkzeug's ``response.cache_control`` and ``response.vary`` read the first line
    only, and writing them replaces every line with it: a ``private`` or a ``Vary:
    Origin`` that a hook added as a second line would be lost.
    """
    lines = headers.getlist(name)
    if len(lines) > 1:
        headers[name] = ", ".join(lines)


def one_cache_control_line(headers: Headers) -> str:
    """The ``Cache-Control`` of ``headers`` as one line, directive names in lower case.

    Several lines are one comma-separated list (RFC 9110 5.3) and directive names are
    case-insensitive (RFC 9111 5.2), while werkzeug's ``cache_control`` reads the first
    line only and matches names as written: a view's ``Private`` would read as nothing.
    A directive given twice is kept once, as restrictive as its occurrences say (see
    :func:`_stricter`), never the last one as a dict would keep it.
    """
    merged: dict[str, str | None] = {}
    for item in parse_list_header(", ".join(headers.getlist("Cache-Control"))):
        for written, value in parse_dict_header(item).items():
            name = written.lower()
            merged[name] = _stricter(name, merged[name], value) if name in merged else value
    return dump_header(merged)


_QUALIFIED: Final = frozenset({"private", "no-cache"})
"""Directives that apply to the whole response bare, and to some fields with names."""


def _stricter(name: str, first: str | None, second: str | None) -> str | None:
    """One value for a directive given twice: a bare ``private``/``no-cache`` over one
    naming fields (the whole response, not ``Set-Cookie`` alone: RFC 9111 5.2.2.4 and
    5.2.2.7), two field lists joined, the smaller of two ages (RFC 9111 4.2.1 uses the
    first, or takes the response as stale: the smaller is never fresher; a malformed
    one is 0), else the first.
    """
    if name in _QUALIFIED:
        if first is None or second is None:
            return None
        fields: dict[str, str] = {}  # field names are case-insensitive: the first spelling
        for field in [*parse_list_header(first), *parse_list_header(second)]:
            fields.setdefault(field.lower(), field)
        return ", ".join(fields.values())
    if name in _AGES:  # a malformed age reads as 0, as RFC 9111 4.2.1 would have it stale
        return str(min(_age(first), _age(second)))
    return first


_AGES: Final = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})


def _age(value: str | None) -> int:
    return int(value) if value is not None and value.isascii() and value.isdigit() else 0


def _merge_cache_control(response: Response, template: ResponseCacheControl) -> None:
    """Add the template's directives the response lacks; restrictive beats ``public``,
    and a bare ``private``/``no-cache`` of either beats one that names fields."""
    if "Cache-Control" in response.headers:
        response.headers["Cache-Control"] = one_cache_control_line(response.headers)
    header = response.cache_control
    for name in _QUALIFIED:  # werkzeug holds a bare directive as None
        if name in template and template[name] is None and header.get(name) is not None:
            del header[name]  # the template's bare one goes in below
    header.update({k: v for k, v in template.items() if k not in header})
    if header.public and (header.private or header.no_store):
        header.public = False


# -- Vary -------------------------------------------------------------------------------


def vary(*headers: str) -> ViewDecorator:
    """Add request header names to the view's ``Vary`` (merged, case-insensitively once).

    Put it below ``@tc.cached``, which must see the ``Vary`` to keep variants apart.

    :param headers: field names, such as ``"Accept-Language"``; ``"*"`` is allowed.
    :returns: the decorator.
    :raises ValueError: at decoration time, for no names or a name that is not a field
        name (``"Accept, Cookie"`` must be given as two names).
    """
    if not headers:
        raise ValueError("vary() needs at least one header name")
    for name in headers:
        if not is_field_name(name):
            raise ValueError(f"vary(): {name!r} is not a header name")

    def add(response: Response) -> None:
        one_line(response.headers, "Vary")
        response.vary.update(headers)  # werkzeug's HeaderSet: case-insensitive, no repeats

    def decorate(view: View[P]) -> Callable[P, Response]:
        return _after(view, add)

    return decorate


# -- ETag -------------------------------------------------------------------------------


@overload
def etag(view: View[P], /) -> Callable[P, Response]: ...
@overload
def etag(view: None = None, /, *, weak: bool = False, current: None = None) -> ViewDecorator: ...
@overload
def etag(
    view: None = None, /, *, weak: bool = False, current: Callable[P, str | None]
) -> BoundViewDecorator[P]: ...
def etag(
    view: View[P] | None = None,
    /,
    *,
    weak: bool = False,
    current: Callable[P, str | None] | None = None,
) -> Callable[P, Response] | BoundViewDecorator[P]:
    """Give GET/HEAD responses an ETag and answer the ETag preconditions.

    GET/HEAD: a 2xx, non-streamed response without an ETag gets one hashed from its
    body (werkzeug's ``generate_etag``); a failing ``If-Match`` (strong comparison)
    raises 412, a matching ``If-None-Match`` (weak comparison) turns it into a 304.
    The view runs first, since the tag is its body, unless ``current`` is given.

    Other methods (PUT, PATCH, DELETE, POST) must not run their side effect when the
    precondition fails, so it is checked *before* the view against the resource's
    current tag: ``current(...)`` if given, else the tag of what a GET of the same URL
    answers now (the GET view is called, without its hooks, only when the request
    carries ``If-Match`` or ``If-None-Match``; a GET that is not 2xx means the resource
    does not exist; ``teardown_request`` functions run for that GET too).
    ``If-Match`` not matching, or ``If-None-Match`` matching, raises
    :class:`~werkzeug.exceptions.PreconditionFailed` (412) and the view does not run.
    Their responses are not tagged: a PUT's body is not the resource's representation.

    :param view: the view, when used bare (``@etag``).
    :param weak: make generated tags weak (``W/"..."``): for bodies that are equivalent
        rather than byte-identical. A weak tag never satisfies ``If-Match`` (RFC 9110's
        strong comparison), except ``If-Match: *``.
    :param current: called with the view's arguments, returns the resource's current
        opaque tag (unquoted) or ``None`` when it does not exist. Then GET/HEAD answer
        ``If-None-Match`` with a 304 without running the view, responses carry this tag,
        and writes skip the internal GET.
    :returns: the decorated view, or the decorator.
    :raises PreconditionFailed: per request, as above.
    """

    def decorate(view: View[P]) -> Callable[P, Response]:
        call = _synced(view)

        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
            request.environ[_IF_MATCH_ANSWERED] = True  # for a last_modified inside
            if request.method in _READS:
                return _tagged_read(call, args, kwargs, weak, current)
            _check_write_preconditions(args, kwargs, weak, current)
            return make_response(call(*args, **kwargs))

        setattr(wrapper, _IF_MATCH_ANSWERED, True)  # for a last_modified around it
        return wrapper

    return decorate if view is None else decorate(view)


_IF_MATCH_ANSWERED: Final = "tiered_cache_if_match_answered"
"""An :func:`etag` answers ``If-Match``: set on its view (``functools.wraps`` carries it
up through the decorators above) and in the environ of the requests it runs for."""


def _tagged_read(
    call: Callable[..., ResponseReturnValue],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    weak: bool,
    current: Callable[..., str | None] | None,
) -> Response:
    """A GET/HEAD under ``@etag``: early 304 by ``current``, else tag the view's body."""
    tag = current(*args, **kwargs) if current is not None else None
    if tag is not None:
        _check_if_match(tag, weak)
        if request.if_none_match.contains_weak(tag):
            return _not_modified(lambda response: response.set_etag(tag, weak))
    response = make_response(call(*args, **kwargs))
    if response.is_streamed or not 200 <= response.status_code < 300:
        return response
    if tag is not None and "ETag" not in response.headers:
        response.set_etag(tag, weak)
    response.add_etag(weak=weak)  # keeps one the view or ``current`` set
    _check_if_match(*response.get_etag())
    # werkzeug's own If-Match check refuses "If-Match: *" (412): it was checked above.
    environ = {k: v for k, v in request.environ.items() if k != "HTTP_IF_MATCH"}
    response.make_conditional(environ)
    return response


def _check_if_match(tag: str | None, weak: bool | None) -> None:
    """Raise 412 unless ``If-Match`` is absent, ``*`` or strongly matches ``tag``."""
    condition = request.if_match
    if not condition:  # absent (or unparsable, which werkzeug reads as absent)
        return
    if tag is not None and (condition.star_tag or (not weak and condition.is_strong(tag))):
        return
    raise PreconditionFailed("If-Match does not match the current representation.")


def _check_write_preconditions(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    weak: bool,
    current: Callable[..., str | None] | None,
) -> None:
    """Before an unsafe method's view: raise 412 when its ETag preconditions fail."""
    if not (request.if_match or request.if_none_match):
        return
    if current is not None:
        found = current(*args, **kwargs)
        tag, is_weak = (found, weak) if found is not None else (None, None)
    else:
        tag, is_weak = _representation_tag()
        if tag == _NO_GET:
            return
    _check_if_match(tag, is_weak)
    if tag is not None and request.if_none_match.contains_weak(tag):
        raise PreconditionFailed("If-None-Match matches the current representation.")


def _representation_tag() -> tuple[str, bool] | tuple[None, None]:
    """The ETag of what a GET of this URL answers now; ``(None, None)``: no resource;
    ``(_NO_GET, False)``: the URL answers no GET (405).

    Only the matched view runs (``dispatch_request``): no before/after-request hooks,
    no session saved, in a request context of its own with the request's headers and
    cookies minus the conditional ones and the body. That context shares the app
    context (``g``), and popping it runs the ``teardown_request`` functions; an app for
    which that is wrong passes ``current=`` to :func:`etag` instead.
    """
    environ = {k: v for k, v in request.environ.items() if k not in _NOT_FOR_GET}
    environ.update({"REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()})
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    with app.request_context(environ):
        try:
            response = app.make_response(app.dispatch_request())
        except MethodNotAllowed:  # no GET at this URL: whether it exists is not known
            return _NO_GET, False
        except HTTPException:  # 404 and the like: nothing there
            return None, None
        finally:
            _release_route_lock(environ)
        if not 200 <= response.status_code < 300:
            return None, None
        if "ETag" in response.headers:
            return response.get_etag()
        if response.is_streamed:  # it exists (If-Match: * holds), with no tag to compare
            return _UNTAGGED, True
        return generate_etag(response.get_data()), False


_NO_GET: Final = "\x01"
"""The tag of a URL that answers no GET (a PUT- or DELETE-only route): nothing to weigh
a write's preconditions against, so the view decides (no client can send it)."""

_UNTAGGED: Final = "\x00"
"""The tag of a resource that exists but whose tag cannot be known (its GET streams):
weak, so no If-Match list matches it, and no client can send it."""


def _release_route_lock(environ: dict[str, Any]) -> None:
    """A ``@tc.cached`` GET run here never reaches ``request_finished``: let go of the
    page's refresh lock it may hold (no-op for apps without the extension)."""
    from .routes import release_leftover

    release_leftover(environ)


# -- Last-Modified ----------------------------------------------------------------------


def last_modified(fn: Callable[P, datetime | None]) -> BoundViewDecorator[P]:
    """Answer date preconditions from ``fn`` *before* the view runs, and set Last-Modified.

    A write's ``If-Match`` and ``If-None-Match`` are weighed first, with no :func:`etag`
    below or above to answer them, against the strong tag of what a GET of the URL
    answers now (``*``: the resource exists): 412 without running the view when one
    fails (a create-only ``If-None-Match: *`` on a resource that exists, a stale tag).
    That GET is the matched view alone, as :func:`etag`'s (see its ``current=``): no
    before/after-request hooks, ``teardown_request`` run; it runs for any unsafe method
    that sends either header, POST included. A URL that answers no GET (405) has
    nothing to weigh them against: the view decides.

    ``fn`` is then called with the view's arguments and returns when the resource last
    changed (naive datetimes are UTC), or ``None`` when that is unknown or the resource
    does not exist: then the view just runs. With a date:

    - ``If-Unmodified-Since`` earlier than it (and no ``If-Match``): 412 without running
      the view, for any method (a PUT that would overwrite a newer version).
    - GET/HEAD with ``If-Modified-Since`` at or after it (and neither ``If-None-Match``
      nor ``If-Match``, which take precedence and are :func:`etag`'s business): 304
      without running the view. With ``If-Match`` the date is not weighed (RFC 9110
      section 13.2.2 weighs it first): a write's was weighed above, and a GET's is left
      to the view (a read changes nothing).
    - Otherwise the view runs; a 2xx GET/HEAD response gets ``Last-Modified`` unless it
      has one.

    Dates compare at whole seconds, as HTTP carries them.

    :param fn: ``(*view_args, **view_kwargs) -> datetime | None``, synchronous.
    :returns: the decorator.
    :raises PreconditionFailed: per request, as above.
    """

    def decorate(view: View[P]) -> Callable[P, Response]:
        call = _synced(view)
        tagged = getattr(view, _IF_MATCH_ANSWERED, False)

        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
            if not (tagged or _IF_MATCH_ANSWERED in request.environ):
                _check_write_tags()
            stamp = fn(*args, **kwargs)
            if stamp is None:
                return make_response(call(*args, **kwargs))
            stamp = _whole_seconds(stamp)
            if _date_says_not_modified(stamp):
                return _not_modified(lambda response: setattr(response, "last_modified", stamp))
            response = make_response(call(*args, **kwargs))
            if _is_full_read(response) and "Last-Modified" not in response.headers:
                response.last_modified = stamp
            return response

        return wrapper

    return decorate


def _check_write_tags() -> None:
    """With no :func:`etag` to answer them, a write's ``If-Match`` and ``If-None-Match``
    are weighed here, before the view and whatever ``fn`` knows of the date (a write
    must not run when one fails), against the strong tag of what a GET of the URL answers
    now (``@tc.cached``'s page, a tag the view sets), as :func:`etag` weighs them: ``*``
    holds when the resource exists, for both. A GET or HEAD runs its view, which changes
    nothing: an :func:`etag`, or ``send_file``, weighs them there; ``@tc.cached`` does
    not (README)."""
    if request.method in _READS:
        return
    _check_write_preconditions((), {}, False, None)


def _whole_seconds(stamp: datetime) -> datetime:
    """``stamp`` as HTTP carries it: aware UTC, no microseconds (naive means UTC)."""
    parsed = parse_date(http_date(stamp))
    assert parsed is not None  # http_date always renders a date parse_date reads
    return parsed


def _date_says_not_modified(stamp: datetime) -> bool:
    """Raise 412 on a failed ``If-Unmodified-Since``; true for a GET/HEAD that gets 304."""
    since = request.if_unmodified_since
    if since is not None and "If-Match" not in request.headers and stamp > since:
        raise PreconditionFailed("The resource changed after If-Unmodified-Since.")
    headers = request.headers
    if request.method not in _READS or "If-None-Match" in headers or "If-Match" in headers:
        return False
    # Only If-Modified-Since is left for werkzeug to weigh: no ETag is passed.
    return not is_resource_modified(request.environ, last_modified=stamp)


# -- shared -----------------------------------------------------------------------------


def _synced(view: View[P]) -> Callable[P, ResponseReturnValue]:
    """The view as a sync callable (Flask runs ``async def`` views through asgiref)."""

    @functools.wraps(view)
    def call(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        return current_app.ensure_sync(view)(*args, **kwargs)  # type: ignore[no-any-return]

    return call


def _after(view: View[P], change: Callable[[Response], None]) -> Callable[P, Response]:
    """Wrap ``view`` so that ``change`` edits its response, whatever the view returned."""
    call = _synced(view)

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        response = make_response(call(*args, **kwargs))
        change(response)
        return response

    return wrapper


def _not_modified(mark: Callable[[Response], None]) -> Response:
    """An empty 304, marked with the validator that earned it."""
    response: Response = current_app.response_class(status=304)
    mark(response)
    return response


def _is_full_read(response: Response) -> bool:
    """A 2xx answer to GET/HEAD: what validators describe."""
    return request.method in _READS and 200 <= response.status_code < 300
