"""``RateLimiter``: rate limits in Redis, one round trip per check, no Flask.

Keys. Every limit of one client lives under
``{prefix}:{version}:#rl:{<client digest>}:<scope>:<strategy>:<amount>/<period>``. The
client's key is always hashed (BLAKE2b, 128 bits): addresses are not stored in Redis in
clear, and a client cannot pick a Redis Cluster slot. The digest is the hash tag, so all
limits of one client, in every scope, share one slot and one script call checks them
together. The scope is the key layout's encoded name (a digest when it is long or has
unsafe characters); the strategy is part of the key, so changing a route's strategy
starts it afresh instead of reading another algorithm's data.

Checks. :meth:`RateLimiter.hit` runs one strategy script (``EVALSHA``: one command) over
all the limits given, all or nothing. A refusal goes into the local deny cache
(:mod:`tiered_cache.ratelimit.deny_cache`), so the same client is refused from memory
until it may retry.

Redis down, or the breaker open: ``hit`` returns a :class:`Decision` with
``available=False``, admitted when the limiter fails open (the default) and refused when
it fails closed; it never raises for an outage. The admin calls, :meth:`status` and
:meth:`reset`, raise :class:`~tiered_cache.CacheUnavailable` instead: an admin should
hear that nothing was read or deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Final

import redis

from .._forks import renew_after_fork
from ..bus import Message
from ..errors import CacheUnavailable
from ..keys import encode_name, glob_escape
from ..redis_tier import UNAVAILABLE, unlink_matching
from . import lua
from .decision import Decision, LimitState
from .deny_cache import Denial, DenyCache
from .limits import STRATEGIES, Limit, check_distinct, check_strategy, parse_limits

if TYPE_CHECKING:
    from ..bus import Reset
    from ..cache import Cache

Limits = str | Limit | Sequence[Limit]
"""Limits as a string (``"10/second;1000/hour"``), one :class:`Limit`, or several."""

CODES: Final = {
    "sliding-window-log": "swl",
    "sliding-window-counter": "swc",
    "fixed-window": "fw",
    "gcra": "gcra",
}


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """Limits and a strategy, made ready for the script: key suffixes and ARGV."""

    limits: tuple[Limit, ...]
    strategy: str
    suffixes: tuple[str, ...]
    args: tuple[int, ...]
    name: str
    smallest: Limit
    """The limit of the smallest amount: a cost above it can never be admitted."""


class RateLimiter:
    """Rate limits in the Redis of ``cache``, with its breaker and short timeouts.

    :param cache: the cache whose Redis, key prefix and schema version the limits use;
        refusals are counted in its ``ratelimit_refusals``.
    :param strategy: the default strategy, one of
        :data:`~tiered_cache.ratelimit.limits.STRATEGIES`.
    :param fail_open: admit requests when Redis cannot be asked (else refuse them).
    :param timer: the monotonic clock of the deny cache (injectable for tests).
    :param deny_cache_size: how many refused clients this process remembers (0: none).
    :raises ValueError: naming an unknown strategy.
    """

    def __init__(
        self,
        cache: Cache,
        *,
        strategy: str = "sliding-window-log",
        fail_open: bool = True,
        timer: Callable[[], float] = time.monotonic,
        deny_cache_size: int = 10_000,
    ) -> None:
        _check_strategy(strategy)
        self.cache = cache
        self.strategy = strategy
        self.fail_open = fail_open
        self.deny_cache = DenyCache(deny_cache_size, timer)
        self._tier = cache.redis
        self._root = cache.layout.base + "#rl:"
        self._scripts = lua.register(self._tier.client)
        self._plans: dict[tuple[Any, str], _Plan] = {}
        self._timer = timer
        self._new_tokens()
        cache._listen(self._heard)
        renew_after_fork(self, RateLimiter._after_fork)  # a forked child: empty deny caches

    def _new_tokens(self) -> None:
        # Names of sliding-window-log entries: unique across processes and hosts.
        self._token_prefix = uuid.uuid4().hex[:12] + "-"
        self._tokens = itertools.count()

    def _after_fork(self) -> None:
        self.deny_cache.after_fork()
        self._new_tokens()

    # -- checks -------------------------------------------------------------------------

    def hit(
        self,
        limits: Limits,
        key: str,
        *,
        strategy: str | None = None,
        cost: int = 1,
        scope: str = "",
    ) -> Decision:
        """Spend ``cost`` on every limit for ``key``, if every limit admits it.

        One Redis command (``EVALSHA``), or none when the deny cache already refuses
        the client. All or nothing: a refusal spends nothing.

        :param limits: the limits to check together.
        :param key: the client (an address, a user id); hashed before use.
        :param strategy: the algorithm (default: the limiter's).
        :param cost: units this request takes, >= 1.
        :param scope: a name separating limits that share text and client (a route).
        :returns: the decision; when Redis could not be asked, ``available`` is False
            and ``admitted`` is the limiter's ``fail_open``. A cost above a limit's
            amount is refused without asking Redis, with an infinite ``retry_after``
            (``Decision.never``) and no figures.
        :raises ValueError: for bad limits, strategy or cost.
        """
        plan = self._plan(limits, strategy)
        _check_cost(cost)
        if cost > plan.smallest.amount:
            # No wait can admit it, Redis up or down: refused here, holding nothing, so
            # a client choosing its costs cannot make Redis or the deny cache work.
            self.cache.ratelimit_refusals += 1
            return Decision(admitted=False, retry_after=math.inf, refused_by=plan.smallest)
        prefix = self._prefix(key, scope)
        deny_key = (prefix, plan.name)
        denial = self.deny_cache.get(deny_key, cost)
        if denial is not None:
            self.cache.ratelimit_refusals += 1
            return self._from_memory(denial)
        self.cache._ensure_bus()  # a process that holds refusals must hear resets
        since = self.deny_cache.epoch  # before the check: a reset may overtake it
        decision = self._call(plan, prefix, cost, spend=True)
        if decision is None:
            return self._unavailable()
        if not decision.admitted:
            self.cache.ratelimit_refusals += 1
            self.deny_cache.put(deny_key, decision.retry_after, cost, decision, since=since)
        return decision

    def status(
        self,
        limits: Limits,
        key: str,
        *,
        strategy: str | None = None,
        cost: int = 1,
        scope: str = "",
    ) -> Decision:
        """The figures of ``key``'s limits now, spending nothing (for admin use).

        ``admitted`` tells whether a request of ``cost`` would be admitted now.

        :raises CacheUnavailable: when Redis cannot be asked.
        :raises ValueError: for bad limits, strategy or cost.
        """
        plan = self._plan(limits, strategy)
        _check_cost(cost)
        decision = self._call(plan, self._prefix(key, scope), cost, spend=False, fail_open=False)
        if decision is None:  # an error reply (foreign data under our key): logged
            raise CacheUnavailable(f"the rate limit status of {key!r} could not be read")
        return decision

    def reset(self, key: str | None = None, *, scope: str | None = None) -> int:
        """Forget what was spent: by ``key`` (every scope, or one), every client of a
        ``scope``, or everything under this prefix and schema version (no arguments).

        Deletes with SCAN + UNLINK (never KEYS), then drops the refusals it covers from
        the deny cache of this process and, over the invalidation bus, of every other
        process (with ``invalidation`` off, theirs expire within the retry time they gave).

        :returns: how many Redis keys were deleted.
        :raises CacheUnavailable: when Redis cannot be asked.
        """
        root = glob_escape(self._root)
        tag = None if key is None else "{" + _digest(key) + "}"
        part = None if scope is None else _scope_part(scope)
        if tag is None and part is None:
            pattern = root + "*"
        else:
            # "{*}" stops at the one "}" of a key: the scope is matched where it stands.
            pattern = root + ("{*}" if tag is None else glob_escape(tag))
            pattern += ":" + ("*" if part is None else glob_escape(part)) + ":*"
        deleted = self._tier.run(
            "rate limit reset", lambda c: unlink_matching(c, pattern), fail_open=False
        )
        if deleted is UNAVAILABLE:  # not with fail_open=False; this narrows the type
            raise CacheUnavailable("the rate limits could not be reset")
        # After the deletion: a refusal held from before it is dropped, and one from a
        # check that overlapped it is refused by the deny cache's epoch.
        # Every limiter of this process (the bus skips a process's own messages).
        self.cache._tell_listeners(Message(self.cache._sender, resets=((tag, part),)))
        self.cache._announce("rate limit reset", resets=((tag, part),))
        return deleted

    def _heard(self, message: Message | None) -> None:
        """The bus: a process reset limits or cleared the cache (which deletes every
        counter), or messages may have been missed."""
        if message is None or message.flush:
            self.deny_cache.clear()
            return
        for reset in message.resets:
            self._forget(reset)

    def _forget(self, reset: Reset) -> None:
        """Drop the deny cache's refusals that ``reset`` covers."""
        tag, part = reset
        if tag is None and part is None:
            self.deny_cache.clear()
        else:
            self.deny_cache.discard(lambda k: _reset_covers(k, self._root, tag, part))

    # -- the script call ----------------------------------------------------------------

    def _call(
        self, plan: _Plan, prefix: str, cost: int, *, spend: bool, fail_open: bool = True
    ) -> Decision | None:
        """One script call; None when Redis could not be asked (or answered an error)."""
        keys = [prefix + suffix for suffix in plan.suffixes]
        args = [cost, 1 if spend else 0, f"{self._token_prefix}{next(self._tokens)}", *plan.args]
        script = self._scripts[plan.strategy]
        try:
            reply = self._tier.run(
                "rate limit", lambda c: script(keys, args, client=c), fail_open=fail_open
            )
        except redis.ResponseError as exc:
            # Redis is up but the script failed: foreign data under one of our keys.
            self.cache._log.warning("ratelimit", "rate limit check failed on %s: %s", keys, exc)
            return None
        return None if reply is UNAVAILABLE else _decision(plan, reply, cost)

    def _unavailable(self) -> Decision:
        if self.fail_open:
            return Decision(admitted=True, available=False)
        return Decision(
            admitted=False, retry_after=self.cache.config.breaker_reset, available=False
        )

    def _from_memory(self, denial: Denial) -> Decision:
        """The refusal held in the deny cache, with its times brought up to now."""
        elapsed = self._timer() - denial.refused_at
        held = denial.decision
        states = tuple(
            dataclasses.replace(s, reset_after=max(0.0, s.reset_after - elapsed))
            for s in held.states
        )
        retry_after = max(0.0, held.retry_after - elapsed)
        return dataclasses.replace(held, states=states, retry_after=retry_after, local=True)

    # -- keys and plans -----------------------------------------------------------------

    def _prefix(self, key: str, scope: str) -> str:
        return f"{self._root}{{{_digest(key)}}}:{_scope_part(scope)}:"

    def _plan(self, limits: Limits, strategy: str | None) -> _Plan:
        strategy = self.strategy if strategy is None else strategy
        cache_key = (limits if isinstance(limits, str | Limit) else tuple(limits), strategy)
        plan = self._plans.get(cache_key)
        if plan is None:
            _check_strategy(strategy)
            parsed = _as_limits(limits)
            check_strategy(parsed, strategy)  # as @tc.limit does: a log of millions stalls Redis
            plan = _make_plan(parsed, strategy)
            if len(self._plans) < 1024:  # limits come from code and config, not requests
                self._plans[cache_key] = plan
        return plan


def _make_plan(limits: tuple[Limit, ...], strategy: str) -> _Plan:
    code = CODES[strategy]
    suffixes = tuple(f"{code}:{limit.amount}/{limit.period}" for limit in limits)
    args = tuple(n for limit in limits for n in (limit.amount, limit.period * 1_000_000))
    name = code + ";" + ";".join(suffixes)
    return _Plan(limits, strategy, suffixes, args, name, min(limits, key=lambda x: x.amount))


def _decision(plan: _Plan, reply: Sequence[int], cost: int) -> Decision:
    """A :class:`Decision` from a script's reply (see ``scripts/_driver.lua``).

    A cost above the smallest limit's amount can never be admitted: the scripts refuse
    it (their wait for it is a placeholder), and here it is refused by that limit, with
    an infinite wait, as :meth:`RateLimiter.hit` refuses it without asking.
    """
    admitted, retry_us, now_us = (int(n) for n in reply[:3])
    now = now_us / 1e6
    states = []
    refused_by = None
    longest = 0
    for i, limit in enumerate(plan.limits):
        remaining, reset_us, wait_us = (int(n) for n in reply[3 + 3 * i : 6 + 3 * i])
        states.append(LimitState(limit, remaining, reset_us / 1e6, now + reset_us / 1e6))
        if wait_us > longest:
            refused_by, longest = limit, wait_us
    if cost > plan.smallest.amount:
        return Decision(
            admitted=False, states=tuple(states), retry_after=math.inf, refused_by=plan.smallest
        )
    return Decision(
        admitted=bool(admitted),
        states=tuple(states),
        retry_after=0.0 if admitted else retry_us / 1e6,
        refused_by=None if admitted else refused_by,
    )


def _as_limits(limits: Limits) -> tuple[Limit, ...]:
    if isinstance(limits, str):
        return parse_limits(limits)
    found = (limits,) if isinstance(limits, Limit) else tuple(limits)
    if not found or not all(isinstance(limit, Limit) for limit in found):
        raise ValueError(f"expected a limit string or Limit objects, not {limits!r}")
    return check_distinct(found)


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown rate limit strategy {strategy!r}: expected one of {STRATEGIES}")


def _check_cost(cost: int) -> None:
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
        raise ValueError(f"a rate limit cost is an integer >= 1, not {cost!r}")


def _digest(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"rate limit keys are strings, not {type(key).__name__}: {key!r}")
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _scope_part(scope: str) -> str:
    return encode_name(scope) if scope else ""


def _reset_covers(deny_key: Hashable, root: str, tag: str | None, part: str | None) -> bool:
    """Whether a deny cache key ``(prefix, plan)`` is one of the clients a reset frees."""
    prefix = deny_key[0] if isinstance(deny_key, tuple) else None
    if not isinstance(prefix, str) or not prefix.startswith(root):
        return False
    found_tag, _, rest = prefix[len(root) :].partition(":")
    return (tag is None or found_tag == tag) and (part is None or rest[:-1] == part)
