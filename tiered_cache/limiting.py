"""Rate limits on Flask routes (SPEC sections 3 and 6): ``@tc.limit`` and the default limits.

How a request is checked:

- ``@tc.limit(...)`` only records :class:`LimitOptions` on the view (a thin wrapper of
  it); the check runs in a ``before_request`` hook, so it comes before ``@tc.cached`` can
  serve a hit, whichever order the decorators are in. (The WSGI fast path of ``public=True`` cached
  routes answers before Flask runs and so skips limits by design: see
  :mod:`tiered_cache.wsgi`.)
- A route with ``@tc.limit`` is checked against its own limits only; every other route
  against ``TIERED_CACHE_RATELIMIT_DEFAULT``, counted per route. A route's own limits
  replace the defaults (as in Flask-Limiter), so a route can be looser than the default
  as well as stricter; write ``"1000/hour;10/minute"`` to keep both. A request of a
  method none of the route's own limits counts (``methods=``) gets the defaults. The
  extension's own ``/_tiered_cache/*`` endpoints, static files and requests that match no
  route (404s) get no default limits, and ``OPTIONS`` requests (CORS preflights) are
  counted only by limits whose ``methods`` name it.
- ``@tc.limit`` goes below ``@app.route`` (Flask registers what the decorators below
  the route made; one written above is not applied, and the first request logs a
  warning naming it), or on the methods of a class-based view (``MethodView``: each
  counts its own HTTP method).
- All limits of one ``@tc.limit`` are checked in one Redis round trip, all or nothing.
  Stacked ``@tc.limit`` decorators are checked one after the other (one round trip each,
  in the order they are listed, top first); a refusal stops there, and what earlier ones
  spent stays spent. So list a client's own limit above a limit shared by everyone: a
  client refused by its own then spends nothing of the shared one.
- The key is ``key()`` or the client address as Flask sees it (``request.remote_addr``:
  put werkzeug's ``ProxyFix`` in front of the app behind a proxy; ``X-Forwarded-For`` is
  never read by itself). ``scope`` (default: the endpoint) separates counts: routes that
  name the same scope share them. ``methods`` filters what is counted (``GET`` counts
  HEAD too: Flask runs the GET view for it), ``exempt_when()`` true skips the check,
  ``cost`` (an int or a callable) is what one request spends; a cost of 0 makes the
  request free (not checked, no headers).

Answers:

- Refused: ``429`` with ``Retry-After`` (whole seconds, rounded up) and the JSON body
  ``{"error": "rate_limited", "limit": "<limit>", "retry_after": <seconds>}``, raised as
  :class:`RateLimited` (a :class:`~tiered_cache.RateLimitExceeded` and a werkzeug
  ``TooManyRequests``), so ``app.errorhandler(429)`` can reshape it. A request whose
  cost is more than a limit's amount can never be admitted: its 429 has no
  ``Retry-After`` and ``"retry_after": null`` (a fixed ``cost`` that large is refused at
  decoration; a callable's is found per request).
- Checked responses (the 429 included) carry ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds, by the Redis
  server's clock) of the most restrictive limit (the refusing one, else the one with the
  fewest units left), and the IETF fields ``RateLimit-Policy`` and ``RateLimit`` for every
  limit checked. ``X-RateLimit-Reset`` and the ``t`` of ``RateLimit`` say when that limit
  next has one more unit (for a fixed window, when the window ends).
- The headers are set after the response is made (``after_this_request``, registered
  by the check, so unchecked requests pay nothing). The route cache never stores them
  (:data:`tiered_cache._response_entry.UNSTORED_HEADERS`): a hit through Flask carries
  the figures of its own check, and a fast-path hit, which is not checked, none.
- Redis down or the breaker open: with ``TIERED_CACHE_RATELIMIT_FAIL_OPEN`` (the default)
  requests are admitted, without rate-limit headers (there are no figures to give);
  failing closed, they get ``503`` with ``Retry-After`` (the breaker's cool-down) and
  ``{"error": "rate_limit_unavailable", "retry_after": <seconds>}``: not a 429, since the
  client did nothing wrong. Never a 500.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from flask import after_this_request, request
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

from ._log import logger
from .errors import CacheUnavailable, ConfigurationError, RateLimitExceeded
from .ratelimit.decision import Decision, LimitState
from .ratelimit.limiter import RateLimiter
from .ratelimit.limits import STRATEGIES, Limit, check_strategy, parse_limits

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.wrappers import Response

    from .flask_ext import AppState

F = TypeVar("F", bound=Callable[..., Any])

MADE_KEY: Final = "limited_views"
"""In ``AppState.extras``: the wrappers the app's extension made with ``@tc.limit``."""
ATTRIBUTE: Final = "__tiered_cache_limits__"
"""On a view function: the tuple of :class:`LimitOptions` of its ``@tc.limit`` decorators."""
EXTRAS_KEY: Final = "ratelimit"


@dataclasses.dataclass(frozen=True, slots=True)
class LimitOptions:
    """The options of one ``@tc.limit`` (or of the default limits); see :meth:`parse`."""

    limits: tuple[Limit, ...]
    key: Callable[[], str] | None = None
    strategy: str | None = None
    cost: int | Callable[[], int] = 1
    methods: frozenset[str] | None = None
    exempt_when: Callable[[], bool] | None = None
    scope: str | None = None

    @classmethod
    def parse(
        cls,
        limits: str,
        *,
        key: Callable[[], str] | None = None,
        strategy: str | None = None,
        cost: int | Callable[[], int] = 1,
        methods: Iterable[str] | None = None,
        exempt_when: Callable[[], bool] | None = None,
        scope: str | None = None,
    ) -> LimitOptions:
        """Validate the arguments of ``@tc.limit`` (at decoration time).

        :raises ValueError: naming the limit string, strategy, cost, methods or scope
            that is not valid.
        """
        try:
            parsed = parse_limits(limits)
        except ValueError as exc:
            raise ValueError(f"@tc.limit({limits!r}): {exc}") from None
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(
                f"unknown rate limit strategy {strategy!r}: expected one of {STRATEGIES}"
            )
        if strategy is not None:  # else the app's: see check_strategies
            check_strategy(parsed, strategy)
        for name, value in (("key", key), ("exempt_when", exempt_when)):
            if value is not None and not callable(value):
                raise ValueError(f"@tc.limit {name}= must be callable, not {value!r}")
        if not callable(cost) and _check_cost(cost) > min(limit.amount for limit in parsed):
            raise ValueError(
                f"@tc.limit({limits!r}, cost={cost}): the cost is more than a limit's "
                "amount, so no request could ever be admitted"
            )
        if scope is not None and (not isinstance(scope, str) or not scope):
            raise ValueError(f"@tc.limit scope= must be a non-empty string, not {scope!r}")
        return cls(parsed, key, strategy, cost, _methods(methods), exempt_when, scope)


def _methods(methods: Iterable[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    names = (methods,) if isinstance(methods, str) else tuple(methods)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"@tc.limit methods= must be HTTP method names, not {methods!r}")
    upper = frozenset(name.upper() for name in names)
    # Flask answers HEAD with the GET view, which runs in full: it must not go uncounted.
    return upper | {"HEAD"} if "GET" in upper else upper


def _check_cost(cost: object) -> int:
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
        raise ValueError(f"a rate limit cost is an integer >= 0, not {cost!r}")
    return cost


def limited_view(
    options: LimitOptions, made: weakref.WeakSet[Callable[..., Any]] | None = None
) -> Callable[[F], F]:
    """The decorator of ``@tc.limit`` (usable before ``init_app``).

    It returns a thin wrapper carrying ``options`` (stacked decorators add up) rather than
    marking ``fn`` itself: one function registered on two routes under different limits
    must not carry both.

    :param made: where the wrappers are kept (the extension's), so that the first request
        can point out one Flask never reached (see :func:`_warn_of_limits_not_applied`).
    """

    def decorate(fn: F) -> F:
        async def async_view(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        def sync_view(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        # Flask runs a coroutine view through ensure_sync: the wrapper must stay one.
        view = async_view if inspect.iscoroutinefunction(fn) else sync_view
        functools.update_wrapper(view, fn)
        # The outer decorator is applied last but listed first: it is checked first.
        stacked = (options, *getattr(fn, ATTRIBUTE, ()))
        shared = _sharing_a_counter(stacked, None, None)
        if shared is not None:
            raise ValueError(shared[0])
        setattr(view, ATTRIBUTE, stacked)
        if made is not None:
            made.add(view)
        return view  # type: ignore[return-value]

    return decorate


class RateLimited(RateLimitExceeded, TooManyRequests):  # type: ignore[misc]
    """The 429 of a refused request: JSON body, ``Retry-After`` in whole seconds.

    A request whose cost is more than a limit's amount can never be admitted: its 429
    has no ``Retry-After`` (RFC 6585 makes it optional) and ``"retry_after": null``.

    :ivar limit: the text of the limit that refused.
    :ivar retry_after: whole seconds (rounded up) until the request could be admitted,
        or None when it never can be.
    :ivar decision: the limiter's decision.
    """

    def __init__(self, decision: Decision) -> None:
        limit = "" if decision.refused_by is None else str(decision.refused_by)
        super().__init__(limit, decision.retry_after)
        self.retry_after = decision.retry_after_seconds  # TooManyRequests reset it
        self.decision = decision

    def get_body(self, *args: Any, **kwargs: Any) -> str:
        body = {"error": "rate_limited", "limit": self.limit, "retry_after": self.retry_after}
        return json.dumps(body)

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json")]
        if self.retry_after is not None:
            headers.append(("Retry-After", str(self.retry_after)))
        return headers


class RateLimitUnavailable(CacheUnavailable, ServiceUnavailable):
    """The 503 of a request refused because Redis is down and limits fail closed."""

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__("rate limits are unavailable (Redis cannot be reached)")
        self.retry_after = seconds

    def get_body(self, *args: Any, **kwargs: Any) -> str:
        return json.dumps({"error": "rate_limit_unavailable", "retry_after": self.retry_after})

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), ("Retry-After", str(self.retry_after))]


class Limiting:
    """The rate limits of one app (``app.extensions["tiered_cache"].extras["ratelimit"]``).

    :param app: the app whose views carry ``@tc.limit`` options.
    :param state: the app's extension state.
    """

    def __init__(self, app: Flask, state: AppState) -> None:
        config = state.config
        self.limiter = RateLimiter(
            state.cache, strategy=config.ratelimit_strategy, fail_open=config.ratelimit_fail_open
        )
        default = config.ratelimit_default
        self.default = None if default is None else LimitOptions.parse(default)
        self._app = app
        self._views = app.view_functions
        self._groups: dict[str, tuple[LimitOptions, ...]] = {}
        self._defaults: dict[str, tuple[LimitOptions, ...]] = {}
        self._made: Iterable[Callable[..., Any]] = state.extras.get(MADE_KEY, ())
        self._first = True

    def groups(self, endpoint: str) -> tuple[LimitOptions, ...]:
        """The limits that apply to ``endpoint`` (found once per endpoint)."""
        found = self._groups.get(endpoint)
        if found is None:
            found = _options_of(self._views.get(endpoint), endpoint)
            if not found and self.default is not None and not _exempt_endpoint(endpoint):
                found = (self.default,)
            self._groups[endpoint] = found
        return found

    def _default_for(self, endpoint: str) -> tuple[LimitOptions, ...]:
        """The defaults for a request of a method none of the route's own limits counts:
        counted apart from those (the same limit text would otherwise share their keys).
        Made once per endpoint."""
        found = self._defaults.get(endpoint)
        if found is None:
            found = ()
            if self.default is not None and not _exempt_endpoint(endpoint):
                scope = f"{endpoint} (default limits)"
                found = (dataclasses.replace(self.default, scope=scope),)
            self._defaults[endpoint] = found
        return found

    def before_request(self) -> None:
        """Check the current request; raise the 429 (or 503) that refuses it."""
        if self._first and not self._needed():
            return
        endpoint = request.endpoint
        if endpoint is None:
            return
        groups = self.groups(endpoint)
        if not groups:
            return
        if self.default is not None and not any(map(_counts, groups)):
            # The route's own limits count other methods only: this request gets the
            # defaults, like a route without limits (every route has some, SPEC 4).
            groups = self._default_for(endpoint)
        decisions: list[Decision] = []
        after_this_request(functools.partial(_set_figures, decisions))
        for options in groups:
            decision = self._check(options, endpoint)
            if decision is None:
                continue
            decisions.append(decision)
            if not decision.admitted:
                if not decision.available:
                    raise RateLimitUnavailable(decision.retry_after)
                raise RateLimited(decision)

    def _needed(self) -> bool:
        """On the first request: an app without any limit drops this hook for good.

        Its routes are all known by then (Flask refuses new ones after the first
        request), and a hook costs every request some microseconds. The list is replaced,
        not changed in place, so a request iterating it in another thread is not disturbed.
        """
        # Every route is known now (init_app checked those it knew). Until the check
        # passes, every request fails on it: a limit the strategy cannot keep never runs.
        check_strategies(self._views, self.limiter.strategy)
        self._first = False
        _warn_of_public_limited_routes(self._views)
        _warn_of_limits_not_applied(self._views, self._made)
        if self.default is not None or any(map(_options_of, self._views.values())):
            return True
        hooks = self._app.before_request_funcs
        hooks[None] = [hook for hook in hooks.get(None, []) if hook != self.before_request]
        return False

    def _check(self, options: LimitOptions, endpoint: str) -> Decision | None:
        """One group's decision, or None when it does not apply to this request."""
        if not _counts(options):
            return None
        if options.exempt_when is not None and options.exempt_when():
            return None
        cost = _check_cost(options.cost() if callable(options.cost) else options.cost)
        if cost == 0:
            return None
        key = options.key() if options.key is not None else request.remote_addr or ""
        return self.limiter.hit(
            options.limits,
            str(key),
            strategy=options.strategy,
            cost=cost,
            scope=options.scope or endpoint,
        )


def check_strategies(views: Mapping[str, Callable[..., Any]], strategy: str) -> None:
    """Refuse, naming the setting, a route's limits that the app's ``strategy``, which
    they leave to it, cannot keep (see :data:`~tiered_cache.ratelimit.limits.LOG_MAX_AMOUNT`).

    Also stacked limits that would share one counter (see :func:`_sharing_a_counter`),
    which decoration cannot always tell: a ``scope=`` that names the endpoint, or the
    app's strategy named by one of them and left to the app by the other.

    :param views: the app's view functions by endpoint.
    :raises ConfigurationError: naming ``TIERED_CACHE_RATELIMIT_STRATEGY`` and the view.
    :raises ValueError: for stacked limits that share a counter whatever the strategy.
    """
    for endpoint, view in list(views.items()):
        stacked = _options_of(view, endpoint)
        shared = _sharing_a_counter(stacked, endpoint, strategy)
        if shared is not None:
            reason = f"{shared[0]} (@tc.limit on the endpoint {endpoint!r})"
            if shared[1]:
                raise ConfigurationError("TIERED_CACHE_RATELIMIT_STRATEGY", strategy, reason)
            raise ValueError(reason)
        for options in stacked:
            if options.strategy is None:
                try:
                    check_strategy(options.limits, strategy)
                except ValueError as exc:
                    reason = f"{exc} (@tc.limit on {getattr(view, '__qualname__', view)})"
                    raise ConfigurationError(
                        "TIERED_CACHE_RATELIMIT_STRATEGY", strategy, reason
                    ) from None


def _sharing_a_counter(
    stacked: Sequence[LimitOptions], endpoint: str | None, strategy: str | None
) -> tuple[str, bool] | None:
    """Why two stacked ``@tc.limit`` of one route would share a counter, or None.

    A counter is the client's key, the scope (the endpoint unless named), the strategy
    and the limit's amount and period: which decorator counted is not part of it. So the
    same limit stacked twice in one scope is one count: with other keys (an address and
    a user name), a user name that reads as an address would spend that address's
    requests; for methods that overlap, one request is counted twice. Shared by design
    only when both name the scope, with one key, for methods apart (a class-based view's
    GET and POST on one budget).

    :param endpoint: the route's, once known (None at decoration: a named scope is then
        not compared with the default one).
    :param strategy: the app's, for limits that leave it to the app; None before it is
        known (then only limits whose strategies read alike are compared).
    :returns: the reason, and whether the app's strategy is what made the two alike.
    """
    for i, one in enumerate(stacked):
        for other in stacked[:i]:
            scopes = one.scope or endpoint, other.scope or endpoint
            if scopes[0] != scopes[1] or (one.strategy or strategy) != (other.strategy or strategy):
                continue
            if _shared_by_design(one, other):
                continue
            mine = {(limit.amount, limit.period): limit for limit in one.limits}
            for limit in other.limits:
                same = mine.get((limit.amount, limit.period))
                if same is not None:
                    reason = (
                        f"the stacked limits {limit.text!r} and {same.text!r} would share one "
                        f"counter (the same limit and strategy in the scope {scopes[0]!r}): "
                        "give one of them a scope="
                    )
                    return reason, one.strategy != other.strategy
    return None


def _shared_by_design(one: LimitOptions, other: LimitOptions) -> bool:
    """Both name their scope, with one key function, for methods apart."""
    named = one.scope is not None and other.scope is not None and one.key is other.key
    if not named or one.methods is None or other.methods is None:
        return False
    return not one.methods & other.methods


def _options_of(view: Callable[..., Any] | None, endpoint: str = "") -> tuple[LimitOptions, ...]:
    """The ``@tc.limit`` options of a view: on it or a function it wraps (``__wrapped__``),
    or on the methods of a class-based view (``View.as_view``), each counting only its
    own HTTP method there, apart from the other methods' (unless given a ``scope``)."""
    found = _options_on(view)
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return found
    # The class's ``decorators`` (on the view as_view made) and its methods' own, both.
    everything = [*found, *_options_on(getattr(view_class, "dispatch_request", None))]
    for method in sorted(getattr(view_class, "methods", None) or ()):
        for options in _options_on(getattr(view_class, method.lower(), None)):
            if (one := _only(options, method, f"{endpoint} {method}")) is not None:
                everything.append(one)
    return tuple(everything)


def _options_on(view: Callable[..., Any] | None) -> tuple[LimitOptions, ...]:
    found: tuple[LimitOptions, ...] = _in_wrappers(view, ATTRIBUTE) or ()
    return found


def _in_wrappers(view: Callable[..., Any] | None, name: str) -> Any:
    """The first truthy attribute ``name`` of ``view`` or of what it wraps, else None."""
    for one in _wrappers(view):
        found = getattr(one, name, None)
        if found:
            return found
    return None


def _wrappers(view: Callable[..., Any] | None) -> Iterator[Callable[..., Any]]:
    """``view`` and what it wraps (``__wrapped__``), 32 levels at most."""
    seen = 0
    while view is not None and seen < 32:
        yield view
        view = getattr(view, "__wrapped__", None)
        seen += 1


def _warn_of_limits_not_applied(
    views: dict[str, Callable[..., Any]], made: Iterable[Callable[..., Any]]
) -> None:
    """Point out each ``@tc.limit`` Flask never reaches although it reaches the function
    below it: written above ``@app.route``, which registered that function already."""
    reached = {id(one) for view in views.values() for one in _wrappers(view)}
    for wrapper in list(made):
        below = getattr(wrapper, "__wrapped__", None)
        if id(wrapper) not in reached and below is not None and id(below) in reached:
            logger.warning(
                "tiered_cache: @tc.limit on %s is not applied: it is written above "
                "@app.route, which registered the function below it; put it below",
                getattr(wrapper, "__qualname__", wrapper),
            )


def _warn_of_public_limited_routes(views: dict[str, Callable[..., Any]]) -> None:
    """Say which routes carry ``@tc.limit`` and ``@tc.cached(public=True)``: the WSGI fast
    path serves their pages before any limit is checked (by design: see wsgi.py)."""
    for endpoint, view in views.items():
        if _options_of(view) and _is_fast(view):
            logger.warning(
                "tiered_cache: %s has @tc.limit and @tc.cached(public=True): pages the "
                "WSGI fast path serves are not rate limited (drop public=True to limit "
                "every request)",
                endpoint,
            )


def _is_fast(view: Callable[..., Any] | None) -> bool:
    """Whether a ``@tc.cached`` in the view's wrappers lets the fast path serve it."""
    route = _in_wrappers(view, "__tiered_cache_route__")
    return route is not None and bool(route.fast)


def _only(options: LimitOptions, method: str, scope: str) -> LimitOptions | None:
    """``options`` counting requests of ``method`` alone (HEAD with GET) under ``scope``
    (unless they name theirs), or None."""
    methods = _methods((method,))
    assert methods is not None
    if options.methods is not None:
        methods &= options.methods
    if not methods:
        return None
    return dataclasses.replace(options, methods=methods, scope=options.scope or scope)


def _counts(options: LimitOptions) -> bool:
    """Whether ``options`` count this request's method. ``OPTIONS`` only when named:
    a browser's CORS preflight is no use of the route (and a 429 to it breaks CORS)."""
    method = request.method
    if options.methods is None:
        return method != "OPTIONS"
    return method in options.methods


def _exempt_endpoint(endpoint: str) -> bool:
    """Endpoints the default limits leave alone: ours, and static files."""
    return (
        endpoint == "static" or endpoint.endswith(".static") or endpoint.startswith("tiered_cache.")
    )


# -- headers ----------------------------------------------------------------------------


def _set_figures(decisions: list[Decision], response: Response) -> Response:
    """After a checked request: the rate-limit headers of the decisions it got."""
    states = [state for decision in decisions for state in decision.states]
    if not states or decisions[-1].never:
        # Not checked, Redis could not be asked, or refused as never admissible (no
        # figures; another limit's, from an earlier decorator, would contradict it).
        return response
    last = decisions[-1]
    tightest = None if last.admitted else last.tightest
    if tightest is None:
        tightest = min(states, key=lambda s: (s.remaining, -s.reset_after))
    headers = response.headers
    headers["X-RateLimit-Limit"] = str(tightest.limit.amount)
    headers["X-RateLimit-Remaining"] = str(tightest.remaining)
    headers["X-RateLimit-Reset"] = str(math.ceil(tightest.reset_at))
    for name, value in ietf_fields(states):
        headers[name] = value
    return response


def ietf_fields(states: list[LimitState]) -> list[tuple[str, str]]:
    """``RateLimit-Policy`` and ``RateLimit`` for ``states``.

    Syntax of draft-ietf-httpapi-ratelimit-headers-11 (unchanged since -08): Structured
    Field Lists whose items are policy names (SF Strings) with parameters, ``q`` (quota)
    and ``w`` (window, seconds) for the policy, ``r`` (remaining quota) and ``t`` (seconds
    until more quota is available) for the current limit, e.g.
    ``RateLimit-Policy: "20/minute";q=20;w=60`` and ``RateLimit: "20/minute";r=19;t=60``.
    Policies are named by their limit text (made unique within the response).
    """
    names: list[str] = []
    for state in states:
        name = _sf_string(state.limit.text)
        while name in names:
            name = name[:-1] + '#"'
        names.append(name)
    policy = ", ".join(
        f"{name};q={state.limit.amount};w={state.limit.period}"
        for name, state in zip(names, states, strict=True)
    )
    current = ", ".join(
        f"{name};r={state.remaining};t={math.ceil(state.reset_after)}"
        for name, state in zip(names, states, strict=True)
    )
    return [("RateLimit-Policy", policy), ("RateLimit", current)]


def _sf_string(text: str) -> str:
    """An RFC 8941 String: printable ASCII, with ``\\`` and ``"`` escaped."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the extension's hooks ----------------------------------------------------------------


def limiter_of(state: AppState) -> RateLimiter:
    """The app's :class:`~tiered_cache.ratelimit.RateLimiter`.

    :raises RuntimeError: before :func:`init_app` ran for the app.
    """
    limiting = state.extras.get(EXTRAS_KEY)
    if not isinstance(limiting, Limiting):
        raise RuntimeError("the rate limits of this app are not set up (init_app not run)")
    return limiting.limiter


def init_app(app: Flask, state: AppState) -> None:
    """Give ``app`` its rate limiter and the hook that checks limits."""
    limiting = Limiting(app, state)
    state.extras[EXTRAS_KEY] = limiting
    app.before_request(limiting.before_request)


__all__ = [
    "LimitOptions",
    "Limiting",
    "RateLimitUnavailable",
    "RateLimited",
    "ietf_fields",
    "init_app",
    "limited_view",
    "limiter_of",
]
