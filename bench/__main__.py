"""``python -m bench [--quick] [--only NAME ...] [--json PATH | --no-json]``.

Starts its own redis-server (never the one on port 6379), runs the selected benchmarks
side by side in this one run, prints a table per benchmark with ratios computed within
the run, PASS/MISS lines for the targets, and writes the figures as JSON. The exit
status is 0 whatever the figures: targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import redis
import redis.utils

from tests.redis_harness import RedisServer

from . import (
    byte_budget,
    http_instructions,
    http_load,
    l1_hits,
    l2_hits,
    memoize_hits,
    propagation,
    ratelimit_load,
    single_flight,
)
from ._machine import cpu_ticks, stolen_share, yardstick
from ._report import Section, Settings, write_json
from ._setup import Context

BENCHMARKS: tuple[ModuleType, ...] = (
    l1_hits,
    memoize_hits,
    l2_hits,
    propagation,
    single_flight,
    byte_budget,
    http_load,
    http_instructions,
    ratelimit_load,
)
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; always 0 unless the run itself broke."""
    args = _parser().parse_args(argv)
    settings = Settings.make(quick=args.quick)
    selected = [b for b in BENCHMARKS if not args.only or b.NAME in args.only]
    started, ticks = time.monotonic(), cpu_ticks()
    with RedisServer() as server:
        environment = _environment(server, settings)
        print(_header(environment), flush=True)
        context = Context(server.url, settings)
        sections = [_run(bench.run, context, server) for bench in selected]
    elapsed = time.monotonic() - started
    stolen = stolen_share(ticks, cpu_ticks())
    print(_summary(sections, elapsed, stolen), flush=True)
    if not args.no_json:
        record = {"environment": environment, "elapsed_seconds": elapsed, "stolen": stolen}
        record["benchmarks"] = {section.name: section.data for section in sections}
        write_json(args.json, record)
        print(f"results written to {args.json}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and writes")
    parser.add_argument(
        "--only",
        action="append",
        choices=[b.NAME for b in BENCHMARKS],
        metavar="NAME",
        help="run only this benchmark (repeatable): " + ", ".join(b.NAME for b in BENCHMARKS),
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--no-json", action="store_true", help="do not write the JSON file")
    return parser


def _run(bench: Callable[[Context], Section], context: Context, server: RedisServer) -> Section:
    server.flushall()
    started = time.monotonic()
    section = bench(context)
    section.note(f"ran in {time.monotonic() - started:.1f} s")
    print(section.render(), flush=True)
    return section


def _environment(server: RedisServer, settings: Settings) -> dict[str, Any]:
    with server.client() as client:
        redis_server = client.info("server")["redis_version"]
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load average": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "yardstick": f"{yardstick():.1f} µs per sum(range(1000)), best of 5",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "redis-py": redis.__version__,
        "hiredis": _version("hiredis") + (" (in use)" if redis.utils.HIREDIS_AVAILABLE else ""),
        "redis-server": f"{redis_server} ({server.binary}, port {server.port})",
        "cachetools": _version("cachetools"),
        "theine": _version("theine"),
        "mode": "quick" if settings.quick else "full",
        "repetitions": f"{settings.repeat} x >= {settings.min_seconds * 1000:g} ms per candidate",
    }


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _header(environment: dict[str, Any]) -> str:
    width = max(len(key) for key in environment)
    lines = [f"{key.ljust(width)} : {value}" for key, value in environment.items()]
    return "\n".join(["tiered_cache benchmarks", *lines, ""])


def _summary(sections: list[Section], elapsed: float, stolen: str) -> str:
    lines = ["== summary ".ljust(100, "=")]
    for section in sections:
        for target in section.data["targets"]:
            verdict = "PASS" if target["passed"] else "MISS"
            lines.append(f"  {verdict}  [{section.name}] {target['label']}")
    lines.append(f"  total {elapsed:.0f} s; CPU time stolen by the hypervisor meanwhile: {stolen}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
