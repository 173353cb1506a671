"""``flask tiered-cache stats | clear | invalidate NAMESPACE | delete KEY... | doctor``.

The commands act on the app the ``flask`` command loads (its prefix, schema version and
Redis). ``doctor`` examines that Redis with a client of its own, whose timeout is meant
for a diagnosis (a few seconds), not for cache traffic.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
from flask.cli import AppGroup

from . import metrics
from ._durations import checked_seconds
from ._redaction import redacted
from .errors import TieredCacheError
from .keys import encode_name
from .redis_tier import REDIS_ERRORS, Client, client_from_url

if TYPE_CHECKING:
    from flask import Flask

    from .cache import Cache
    from .flask_ext import AppState

T = TypeVar("T")
MIN_VERSION: Final = (6, 2)  # GETEX (sessions), SET ... GET
GOOD_POLICIES: Final = ("allkeys-lru", "allkeys-lfu")

group = AppGroup("tiered-cache", help="Inspect and manage the app's tiered cache.")


def init_app(app: Flask, state: AppState) -> None:
    """Add ``flask tiered-cache`` to ``app``'s command line."""
    app.cli.add_command(group)


def _state() -> AppState:
    from .flask_ext import TieredCache

    return TieredCache.state()


def _checked(what: str, cache: Cache, call: Callable[[], T]) -> T:
    """Run a fail-open cache call, turning a silent failure into a command error.

    The cache answers 0 when Redis is down; the command line must say it failed.
    """
    errors = cache.stats()["redis_errors"]
    try:
        result = call()
    except TieredCacheError as exc:
        raise click.ClickException(f"{what} failed: {exc}") from exc
    except (*REDIS_ERRORS, ValueError) as exc:  # an error reply that is no outage, say
        raise click.ClickException(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    stats = cache.stats()
    if stats["redis_errors"] > errors or stats["breaker_open"]:
        url = redacted(cache.config.redis_url)
        raise click.ClickException(f"{what} failed: Redis at {url} is unavailable")
    return result


# -- stats ---------------------------------------------------------------------------

Cell = Callable[[dict[str, Any]], str]
TABLE: Final[tuple[tuple[str, Cell], ...]] = (
    ("host", lambda w: str(w["host"])),
    ("pid", lambda w: str(w["pid"]) + ("*" if w.get("this_process") else "")),
    ("app", lambda w: str(w.get("app", ""))),
    ("age", lambda w: f"{w.get('age', 0):.0f}s"),
    ("l1_hits", lambda w: str(w["stats"].get("l1_hits", 0))),
    ("l2_hits", lambda w: str(w["stats"].get("l2_hits", 0))),
    ("misses", lambda w: str(w["stats"].get("misses", 0))),
    ("hit%", lambda w: f"{100 * w['stats'].get('hit_ratio', 0.0):.1f}"),
    ("l1_items", lambda w: str(w["stats"].get("l1_items", 0))),
    ("l1_bytes", lambda w: str(w["stats"].get("l1_bytes", 0))),
    ("bus", lambda w: "up" if w["stats"].get("bus_connected") else "down"),
    ("breaker", lambda w: "OPEN" if w["stats"].get("breaker_open") else "closed"),
    ("errors", lambda w: str(w["stats"].get("redis_errors", 0))),
)


def _table(snap: dict[str, Any]) -> str:
    rows = [[cell(w) for _, cell in TABLE] for w in snap["workers"]]
    total = snap["totals"]
    total_row = {"host": "total", "pid": "", "app": f"{total['workers']} workers", "age": 0}
    summary = [cell({**total_row, "stats": total}) for _, cell in TABLE]
    summary[3] = ""
    summary[10] = f"{total.get('bus_connected', 0)} up"
    summary[11] = f"{total.get('breaker_open', 0)} open"
    header = [name for name, _ in TABLE]
    widths = [max(len(r[i]) for r in [header, *rows, summary]) for i in range(len(header))]
    lines = [_row(r, widths) for r in [header, *rows]]
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([*lines, rule, _row(summary, widths), "(* this process)"])


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


@group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_command(as_json: bool) -> None:
    """Show the figures of every worker on every host, and their totals."""
    state = _state()
    from .endpoints import publisher_of

    snap = metrics.snapshot(state.cache, publisher_of(state))
    if as_json:
        click.echo(json.dumps(snap, indent=2, sort_keys=True))
    else:
        click.echo(_table(snap))
    if not snap["complete"]:
        url = redacted(state.cache.config.redis_url)
        raise click.ClickException(
            f"cannot read the workers' figures: Redis at {url} is unavailable"
        )


# -- clear, invalidate, delete --------------------------------------------------------


def _namespace(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A namespace name the cache accepts (not empty), else a usage error."""
    if value is not None:
        try:
            encode_name(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@group.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clear_command(yes: bool) -> None:
    """Delete every key under the app's prefix and schema version."""
    cache = _state().cache
    where = f"{cache.config.prefix}:{cache.config.version}:* on {redacted(cache.config.redis_url)}"
    if not yes:
        click.confirm(f"Delete every key {where}?", abort=True)
    deleted = _checked("clear", cache, cache.clear)
    click.echo(f"Deleted {deleted} keys ({where}).")


@group.command("invalidate")
@click.argument("namespace", callback=_namespace)
def invalidate_command(namespace: str) -> None:
    """Invalidate NAMESPACE in every worker: it gets a new version."""
    cache = _state().cache
    version = _checked("invalidate", cache, lambda: cache.invalidate_namespace(namespace))
    click.echo(f"Namespace {namespace!r} is now at version {version}.")


@group.command("delete")
@click.argument("keys", nargs=-1, required=True)
@click.option("--namespace", "-n", default=None, callback=_namespace, help="The keys' namespace.")
def delete_command(keys: tuple[str, ...], namespace: str | None) -> None:
    """Delete KEYS (from every worker's L1 too)."""
    cache = _state().cache

    def delete() -> int:
        return (cache if namespace is None else cache.namespace(namespace)).delete(*keys)

    deleted = _checked("delete", cache, delete)
    click.echo(f"Deleted {deleted} of {len(keys)} keys.")


# -- doctor ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report."""

    status: str  # OK, INFO, WARN or FAIL
    name: str
    detail: str


COLORS: Final = {"OK": "green", "INFO": "blue", "WARN": "yellow", "FAIL": "red"}


def _seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A finite number of seconds above 0 and within a hundred years (FloatRange lets nan
    through, and a socket timeout past that overflows), else a usage error."""
    try:
        return checked_seconds("the timeout", value, zero=False)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@group.command("doctor")
@click.option(
    "--timeout", default=2.0, show_default=True, callback=_seconds, help="Seconds per Redis call."
)
@click.option(
    "--pings",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="PINGs for the latency figures.",
)
def doctor_command(timeout: float, pings: int) -> None:
    """Check the app's Redis: reachable, latency, version, memory policy, persistence,
    topology, pub/sub. Exits 1 when a check fails (warnings do not fail)."""
    state = _state()
    url = state.cache_config.redis_url
    click.echo(f"Redis: {redacted(url)}")
    client = client_from_url(url, socket_timeout=timeout)
    try:
        checks = list(diagnose(client, state, pings=pings))
    finally:
        client.close()
    for check in checks:
        status = click.style(f"{check.status:<5}", fg=COLORS[check.status])
        click.echo(f"{status} {check.name:<17} {check.detail}")
    failures = sum(c.status == "FAIL" for c in checks)
    warnings = sum(c.status == "WARN" for c in checks)
    click.echo(f"{failures} failed, {warnings} warnings.")
    if failures:
        raise SystemExit(1)


def diagnose(client: Client, state: AppState, *, pings: int) -> Iterator[Check]:
    """Every check, in order; stops after the first when Redis cannot be reached."""
    try:
        latencies = [_timed_ping(client) for _ in range(pings)]
    except REDIS_ERRORS as exc:
        yield Check("FAIL", "reachable", f"{type(exc).__name__}: {exc}")
        return
    yield Check("OK", "reachable", "PING answered")
    yield _latency(latencies, state.cache_config.socket_timeout)
    nodes = _nodes(client)
    for label, node in nodes:
        suffix = f" [{label}]" if len(nodes) > 1 else ""
        for check in _node_checks(node, sessions=state.config.sessions):
            yield dataclasses.replace(check, detail=check.detail + suffix)
    yield from _topology(client)
    yield from _pubsub(client, state)


def _timed_ping(client: Client) -> float:
    started = time.perf_counter()
    client.ping()
    return (time.perf_counter() - started) * 1000


def _latency(latencies: list[float], socket_timeout: float) -> Check:
    low, mid, high = min(latencies), statistics.median(latencies), max(latencies)
    detail = f"min {low:.2f} ms, median {mid:.2f} ms, max {high:.2f} ms ({len(latencies)} PINGs)"
    budget = socket_timeout * 1000
    if mid > budget / 2:
        return Check("WARN", "latency", f"{detail}: near the cache's {budget:.0f} ms timeout")
    return Check("OK", "latency", detail)


def _nodes(client: Client) -> list[tuple[str, Any]]:
    """The servers to examine one by one: every primary of a cluster, else the one."""
    if hasattr(client, "get_primaries"):
        return [(node.name, node.redis_connection) for node in client.get_primaries()]
    kwargs = client.connection_pool.connection_kwargs
    return [(f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}", client)]


def _node_checks(node: Any, *, sessions: bool) -> Iterator[Check]:
    try:
        info = node.info()
    except REDIS_ERRORS as exc:
        yield Check("WARN", "info", f"cannot read INFO ({exc})")
        return
    yield _version(info)
    yield _role(info)
    yield from _memory(node, info)
    yield (
        _persistence(node, info)
        if sessions
        else Check("INFO", "persistence", "not needed (TIERED_CACHE_SESSIONS is off)")
    )


def _version(info: dict[str, Any]) -> Check:
    text = str(info.get("redis_version", "?"))
    try:
        version = tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return Check("WARN", "version", f"{text}: cannot tell")
    if version < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        return Check("WARN", "version", f"{text}: {need} or later is needed (GETEX)")
    return Check("OK", "version", f"{text} ({info.get('redis_mode', 'standalone')})")


def _role(info: dict[str, Any]) -> Check:
    role = info.get("role", "master")
    if role != "master":
        return Check("FAIL", "role", f"{role}: a replica refuses the cache's writes")
    return Check("OK", "role", f"master, {info.get('connected_slaves', 0)} replicas")


def _config(node: Any, name: str) -> str | None:
    """``CONFIG GET name``, or None where CONFIG is refused (managed Redis, ACLs)."""
    try:
        value = node.config_get(name).get(name)
    except REDIS_ERRORS:
        return None
    return None if value is None else str(value)


def _memory(node: Any, info: dict[str, Any]) -> Iterator[Check]:
    maxmemory = _config(node, "maxmemory")
    policy = _config(node, "maxmemory-policy")
    source = "CONFIG GET"
    if maxmemory is None or policy is None:  # INFO memory says the same on Redis >= 4
        maxmemory, policy = info.get("maxmemory"), info.get("maxmemory_policy")
        source = "INFO (CONFIG GET refused)"
        if maxmemory is None or policy is None:
            yield Check("WARN", "maxmemory", "cannot read (CONFIG GET and INFO refused)")
            return
    if int(maxmemory) == 0:
        unbounded = "0 = unbounded: Redis grows until the host runs out"
        yield Check("WARN", "maxmemory", f"{unbounded} (from {source})")
    else:
        yield Check("OK", "maxmemory", f"{int(maxmemory)} bytes (from {source})")
    if policy == "noeviction":
        advice = f"use {' or '.join(GOOD_POLICIES)}"
        yield Check(
            "WARN", "maxmemory-policy", f"noeviction: a full Redis refuses writes; {advice}"
        )
    elif policy in GOOD_POLICIES:
        yield Check("OK", "maxmemory-policy", str(policy))
    else:
        yield Check("OK", "maxmemory-policy", f"{policy} ({' or '.join(GOOD_POLICIES)} advised)")


def _persistence(node: Any, info: dict[str, Any]) -> Check:
    aof = str(info.get("aof_enabled", "0")) == "1"
    save = _config(node, "save")
    if aof or (save is not None and save.strip()):
        rdb = "unknown" if save is None else (save.strip() or "off")
        return Check("OK", "persistence", f"RDB save {rdb}, AOF {'on' if aof else 'off'}")
    if save is None:
        return Check("WARN", "persistence", "AOF off, RDB cannot read (CONFIG GET refused)")
    return Check("WARN", "persistence", "neither RDB nor AOF: sessions die with a restart")


def _topology(client: Client) -> Iterator[Check]:
    if hasattr(client, "get_primaries"):
        try:
            state = client.cluster_info().get("cluster_state")
        except REDIS_ERRORS as exc:
            yield Check("FAIL", "cluster", f"CLUSTER INFO failed ({exc})")
            return
        primaries = len(client.get_primaries())
        status = "OK" if state == "ok" else "FAIL"
        yield Check(status, "cluster", f"state {state}, {primaries} primaries")
        return
    pool = client.connection_pool
    if hasattr(pool, "service_name"):
        try:
            host, port = pool.get_master_address()
        except REDIS_ERRORS as exc:
            yield Check("FAIL", "sentinel", f"no master for {pool.service_name!r} ({exc})")
            return
        yield Check("OK", "sentinel", f"service {pool.service_name!r}: master at {host}:{port}")


def _pubsub(client: Client, state: AppState) -> Iterator[Check]:
    """Subscribe as a worker's bus does, to the bus channel and one of its own
    (``{prefix}:{version}:#bus:{id}``) in one command, so that an ACL that keeps the bus
    from subscribing fails here too; publish on the second and hear it back."""
    config = state.cache_config
    bus = f"{config.prefix}:{config.version}:#bus"
    channels = (bus, f"{bus}:doctor-{uuid.uuid4().hex}")
    token = uuid.uuid4().hex.encode()
    try:
        elapsed = _round_trip(client, channels, token)
    except (*REDIS_ERRORS, TimeoutError) as exc:
        yield Check("FAIL", "pub/sub", f"no round trip ({type(exc).__name__}: {exc})")
        return
    yield Check("OK", "pub/sub", f"round trip in {elapsed:.2f} ms")
    try:
        listeners = _bus_listeners(client, bus)
    except REDIS_ERRORS:
        return
    yield Check("INFO", "bus", f"{listeners} listeners on {bus}")


def _bus_listeners(client: Client, bus: str) -> int:
    """PUBSUB NUMSUB of ``bus``. A cluster's subscribers are counted by the node they
    are connected to, so there every node is asked (replicas too: a subscriber may read
    from one), and redis-py sums the replies."""
    if hasattr(client, "get_primaries"):
        from redis.cluster import RedisCluster

        replies = client.pubsub_numsub(bus, target_nodes=RedisCluster.ALL_NODES)
    else:
        replies = client.pubsub_numsub(bus)
    return int(dict(replies).get(bus.encode(), 0))


def _round_trip(client: Client, channels: tuple[str, ...], token: bytes) -> float:
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(*channels)
        _await(
            pubsub,
            lambda m: m["type"] == "subscribe" and m["data"] == len(channels),
            "no subscription confirmation",
        )
        started = time.perf_counter()
        client.publish(channels[-1], token)
        _await(pubsub, lambda m: m["type"] == "message" and m["data"] == token, "no message")
        return (time.perf_counter() - started) * 1000
    finally:
        pubsub.close()


def _await(pubsub: Any, wanted: Callable[[dict[str, Any]], bool], error: str) -> None:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.0))
        if message is not None and wanted(message):
            return
    raise TimeoutError(error)
