"""Benchmark 8: what one rate-limit check costs under gunicorn, beside Flask-Limiter 4.

Each variant of :mod:`bench.ratelimit_app` (the same trivial view, unlimited, under
``@tc.limit("1000000/hour")`` with the default sliding-window-log and with gcra, and
under Flask-Limiter 4 with its Redis storage and ``moving-window``, headers off (its
default) and on) runs under ``gunicorn -w 2`` (sync workers) on the benchmark's own
redis-server, with the runner and load generator of :mod:`bench.http_load`: round-robin
repetitions, discarded warm-up load, gunicorn and the load generator on separate cores.

Redis commands per request are counted on a separate, exact batch of requests per
variant (``INFO commandstats`` before and after): ``EVALSHA`` per request, every
command the app *sent* per request, and every command Redis *ran* per request, those
inside scripts included (``commandstats`` counts both; a command is taken as run inside
a script when its name appears in the variant's Lua scripts, ours or those of the
``limits`` package Flask-Limiter uses).
"""

from __future__ import annotations

import re
import shutil
import statistics
from importlib import resources
from typing import Any

import redis

from ._report import Section
from ._setup import Context
from .http_load import (
    CONNECTIONS,
    PINNING,
    Gunicorn,
    get_page,
    python_load,
    wrk_load,
)
from .ratelimit_app import LIMIT, PATH, VARIANTS

NAME = "ratelimit"
TITLE = "8. Rate limits: one limit check per request under gunicorn (2 workers), side by side"
APP = "bench.ratelimit_app:create_app()"
COUNTED = 200  # requests per variant whose Redis commands are counted
BASELINE = "fl_moving"
OURS = ("tc_log", "tc_gcra")
# What a new connection or our own measuring sends, and each worker's invalidation bus
# (its subscription, and its liveness PING every few seconds): not per request.
_NOT_PER_REQUEST = frozenset({"info", "hello", "client|setinfo", "flushall", "subscribe", "ping"})
# Each worker's stats publication (tiered_cache.metrics.StatsPublisher, every few
# seconds) is one SET, SADD and PEXPIRE: not per request, but one may land in the
# counted window (it did on a slow machine: 1.005 commands sent a request). No limiter
# sends SADD, so each SADD counted is one publication, and its three commands come off.
_PUBLICATION = ("set", "sadd", "pexpire")


def run(ctx: Context) -> Section:
    """Serve every variant; compare requests/s, CPU and Redis commands per request."""
    section = Section(NAME, TITLE)
    # whole seconds: wrk takes no fractions
    duration, repeats, warm_up = (2.0, 1, 1.0) if ctx.settings.quick else (4.0, 3, 2.0)
    load = wrk_load if shutil.which("wrk") else python_load
    section.note(
        f"limit {LIMIT!r} (every request admitted); load: "
        f"{'wrk' if load is wrk_load else 'Python threads (wrk not installed)'}, "
        f"{CONNECTIONS} connections, {duration:g} s a run after {warm_up:g} s discarded, "
        f"median of {repeats}; " + PINNING
    )
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    counts: dict[str, dict[str, Any]] = {}
    with redis.Redis.from_url(ctx.redis_url) as client:
        for _ in range(repeats):
            for variant in VARIANTS:
                client.flushall()  # every run starts from empty limits
                with Gunicorn(variant, ctx.redis_url, "sync", [], app=APP, path=PATH) as server:
                    server.warm()
                    if variant not in counts:
                        counts[variant] = _count_commands(client, server.port, variant)
                    load(server.port, warm_up, PATH)
                    cpu = server.cpu_seconds()
                    figures = load(server.port, duration, PATH)
                    cpu = server.cpu_seconds() - cpu
                    figures["cpu_us"] = cpu / max(1.0, figures["requests"]) * 1e6
                    runs[variant].append(figures)
    results = {
        variant: {
            "rps": statistics.median(f["rps"] for f in figures),
            "runs": [f["rps"] for f in figures],
            "cpu_us": statistics.median(f["cpu_us"] for f in figures),
            "errors": sum(f["errors"] for f in figures),
            **counts[variant],
        }
        for variant, figures in runs.items()
    }
    _report(section, results)
    section.data["results"] = results
    return section


def _count_commands(client: redis.Redis, port: int, variant: str) -> dict[str, Any]:
    """Redis commands per request over :data:`COUNTED` sequential requests."""
    before = _command_calls(client)
    answers = [get_page(port, PATH) for _ in range(COUNTED)]
    after = _command_calls(client)
    delta = {name: n - before.get(name, 0) for name, n in after.items()}
    publications = delta.get("sadd", 0)
    for name in _PUBLICATION:
        delta[name] = delta.get(name, 0) - publications
    delta = {name: n for name, n in delta.items() if n and name not in _NOT_PER_REQUEST}
    inside = _SCRIPT_COMMANDS["tc" if variant.startswith("tc") else "limits"]
    return {
        "evalsha": delta.get("evalsha", 0) / COUNTED,
        "sent": sum(n for name, n in delta.items() if name not in inside) / COUNTED,
        "ran": sum(delta.values()) / COUNTED,
        "statuses": sorted({status for status, *_ in answers}),
        "headers": all("x-ratelimit-remaining" in h for _, h, _ in answers),
    }


def _command_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def _script_commands(package: str, folder: str) -> frozenset[str]:
    """The command names the Lua scripts in ``package/folder`` call."""
    found: set[str] = set()
    for entry in (resources.files(package) / folder).iterdir():
        if entry.name.endswith(".lua"):
            text = entry.read_text(encoding="utf-8")
            found.update(m.lower() for m in re.findall(r"redis\.call\(\s*['\"](\w+)", text))
    return frozenset(found)


_SCRIPT_COMMANDS = {
    "tc": _script_commands("tiered_cache.ratelimit", "scripts"),
    "limits": _script_commands("limits", "resources/redis/lua_scripts"),
}
assert not any("sadd" in names for names in _SCRIPT_COMMANDS.values()), "see _PUBLICATION"


def _report(section: Section, results: dict[str, dict[str, Any]]) -> None:
    base = results[BASELINE]
    rows = [
        [
            VARIANTS[variant],
            f"{r['rps']:,.0f}",
            " / ".join(f"{x:,.0f}" for x in r["runs"]),
            f"{r['rps'] / base['rps']:.2f}x",
            f"{r['cpu_us']:,.0f}",
            f"{r['evalsha']:.2f}",
            f"{r['sent']:.2f}",
            f"{r['ran']:.2f}",
            str(r["errors"]),
        ]
        for variant, r in results.items()
    ]
    headers = ["variant", "median req/s", "runs", "vs (d)", "CPU µs/req", "EVALSHA/req"]
    headers += ["cmds sent/req", "cmds run/req", "errors"]
    section.table(f"gunicorn -w 2 -k sync, GET {PATH}", headers, rows)
    section.note(
        "cmds sent: what the app sent to Redis per request; cmds run: what Redis executed "
        "per request, the commands inside Lua scripts included"
    )
    for variant in OURS:
        r = results[variant]
        label = f"{VARIANTS[variant]} / {VARIANTS[BASELINE]}"
        section.target(f"{label}, req/s", r["rps"] / base["rps"], 1.0, at_least=True)
        section.note(f"{label}, from CPU per request: {base['cpu_us'] / r['cpu_us']:.2f}")
        section.check(
            f"{VARIANTS[variant]}: one Redis command per admitted request",
            r["sent"] == 1.0 and r["evalsha"] == 1.0,
            f"{r['sent']:.2f} sent ({r['evalsha']:.2f} EVALSHA) per request, "
            f"statuses {r['statuses']}, rate-limit headers on every answer: {r['headers']}",
        )
    errors = sum(r["errors"] for r in results.values())
    section.check("no failed requests", errors == 0, f"{errors} non-2xx or socket errors")
