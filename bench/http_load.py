"""Benchmark 7: requests/s of one 2 KB JSON view under gunicorn, cached every way.

Each variant of :mod:`bench.http_app` runs under ``gunicorn -w 2``, first with sync
workers, then with gthread workers (the variants the cost targets compare), on a free
loopback port, against the benchmark's own redis-server. After a warm-up (both workers'
L1 hot), ``wrk`` loads it for 10 s, five times (after 2 s of load that is not counted: a
fresh worker is slower for its first second or two), and the median requests/s is the
variant's figure (``--quick``: 2 s, once). Five, not three: (b) and (a) differ by a few
per cent, about what one run varies by here.

Each repetition serves every variant once, the variants each target compares one right
after the other, in reverse order every other repetition (so a machine slowing down or
speeding up over the run weighs on both sides of a pair alike). A target's ratio is the
median of its pair's ratios within each repetition; the ratio of the two medians is
shown beside it. Each gthread worker holds at most half of the load generator's
connections (see ``bench/gunicorn.conf.py``): left to chance, one worker usually takes
them all and the other idles, differently from one run to the next.

Without ``wrk`` on PATH a bounded Python load generator (threads with keep-alive
connections) stands in, and the output says so: its figures are lower and GIL-bound,
the ratios still compare like with like.

On a machine with two cores or more, gunicorn (master and workers) is pinned to the last
core (``taskset``) and the load generator is pinned to the others: a load generator that
steals the server's CPU makes every variant look alike. The server's core is then the
bottleneck, so requests/s measure what each variant costs per request. Absolute figures
are this machine's; the ratios are the point.

Target (g) is different: it compares a CPU-bound figure (cached) with one bound by the
view's 20 ms sleep (uncached, at most 100 req/s from 2 sync workers whatever the CPU).
Squeezing both workers onto one core halves the CPU two workers have and so halves that
ratio, which no deployment of two workers would do. So (g) is measured again in a last
pass, sync workers not pinned: the workers may use every core, sharing them with the
load generator (which only lowers the cached figure). The pinned figures are reported
beside it.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.redis_harness import free_port

from ._report import Section
from ._setup import Context
from .http_app import VARIANTS

NAME = "http"
TITLE = "7. HTTP: requests/s under gunicorn (2 workers), side by side"
GTHREAD = ["--threads", "4"]
G_VARIANTS = ("slow_plain", "slow_cached", "slow_public", "flask_floor")
# (f) (c) (a) (b) (d) (e): the pairs the cost targets compare, (c)/(f), (b)/(a) and
# (b)/(d), are served one right after the other.
COST_VARIANTS = (
    "raw_wsgi",
    "public",
    "plain",
    "cached",
    "flask_caching_redis",
    "flask_caching_simple",
)
assert set(COST_VARIANTS) | set(G_VARIANTS) == set(VARIANTS)


@dataclass(frozen=True)
class Pass:
    """One pass over some variants with one worker class."""

    label: str
    worker_class: str
    extra: list[str]
    pinned: bool
    variants: tuple[str, ...]


CONNECTIONS = 8
WARM_UP = 2.0  # seconds of load, discarded, before each measured run
ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"  # not the example app's
CORES = os.cpu_count() or 1
PIN = shutil.which("taskset") is not None and CORES >= 2
SERVER_CORE = CORES - 1
LOAD_CORES = range(CORES - 1)
"""Where the load generator runs when gunicorn is pinned: every core but the server's."""


def _cores(cores: range) -> str:
    """``cores`` as taskset's list: ``0`` or ``0-2``."""
    return str(cores[0]) if len(cores) == 1 else f"{cores[0]}-{cores[-1]}"


def _pinned(command: list[str], cores: range) -> list[str]:
    return ["taskset", "-c", _cores(cores), *command] if PIN else command


PINNING = (
    f"gunicorn pinned to core {SERVER_CORE}, the load to {_cores(LOAD_CORES)}"
    if PIN
    else "no CPU pinning"
)
"""Where the servers and the load generator run, as the output says it."""


PASSES = (
    Pass("sync", "sync", [], True, COST_VARIANTS + G_VARIANTS),
    Pass("gthread", "gthread", GTHREAD, True, COST_VARIANTS),
    # Without pinning the first pass already measured (g) this way.
    *([Pass("sync, not pinned", "sync", [], False, G_VARIANTS)] if PIN else []),
)


def run(ctx: Context) -> Section:
    """Serve every variant with each worker class; compare requests/s."""
    section = Section(NAME, TITLE)
    duration, repeats = (2.0, 1) if ctx.settings.quick else (10.0, 5)
    load = wrk_load if shutil.which("wrk") else python_load
    section.note(
        f"load: {'wrk' if load is wrk_load else 'Python threads (wrk not installed)'}, "
        f"{CONNECTIONS} connections, {duration:g} s a run, median of {repeats}; "
        + PINNING
        + (" (the last pass: neither pinned)" if PIN else "")
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    same_bytes: set[bytes] = set()
    for one in PASSES:
        runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in one.variants}
        x_cache: dict[str, str] = {}
        bodies: dict[str, bytes] = {}
        # Round-robin: each repetition serves every variant once, so a burst of load
        # elsewhere on the machine hits all variants alike instead of one of them.
        for repetition in range(repeats):
            order = one.variants if repetition % 2 == 0 else one.variants[::-1]
            for variant in order:
                server = Gunicorn(
                    variant, ctx.redis_url, one.worker_class, one.extra, pinned=one.pinned
                )
                with server:
                    x_cache[variant], bodies[variant] = server.warm()
                    # A fresh worker is slower for a second or two.
                    load(server.port, WARM_UP, pinned=one.pinned)
                    cpu = server.cpu_seconds()
                    figures = load(server.port, duration, pinned=one.pinned)
                    cpu = server.cpu_seconds() - cpu
                    figures["cpu_us"] = cpu / max(1.0, figures["requests"]) * 1e6
                    runs[variant].append(figures)
        results[one.label] = {
            variant: {
                "rps": statistics.median(f["rps"] for f in measured),
                "runs": [f["rps"] for f in measured],
                "cpu_us": statistics.median(f["cpu_us"] for f in measured),
                "errors": sum(f["errors"] for f in measured),
                "x_cache": x_cache[variant],
                "body_bytes": len(bodies[variant]),
            }
            for variant in VARIANTS  # the tables in (a)..(g) order, whatever the run order
            if (measured := runs.get(variant))
        }
        same_bytes.update(body for variant, body in bodies.items() if variant != "flask_floor")
    _report(section, results)
    section.check(
        "every variant but Flask's floor answers the same bytes",
        len(same_bytes) == 1,
        f"{len(same_bytes)} distinct bodies",
    )
    section.data["results"] = results
    return section


def _report(section: Section, results: dict[str, dict[str, dict[str, Any]]]) -> None:
    for one in PASSES:
        by_variant = results[one.label]
        base = by_variant["plain"]["rps"] if "plain" in by_variant else None
        rows = [
            [
                VARIANTS[variant],
                f"{r['rps']:,.0f}",
                " / ".join(f"{x:,.0f}" for x in r["runs"]),
                f"{r['rps'] / base:.2f}x" if base else "-",
                f"{r['cpu_us']:,.0f}",
                r["x_cache"] or "-",
                str(r["errors"]),
            ]
            for variant, r in by_variant.items()
        ]
        headers = ["variant", "median req/s", "runs", "vs (a)", "CPU µs/req", "X-Cache", "errors"]
        where = "pinned to one core" if one.pinned and PIN else "not pinned"
        section.table(f"gunicorn -w 2 -k {one.worker_class}, {where}", headers, rows)
    for one in PASSES:
        rps = {variant: figures["rps"] for variant, figures in results[one.label].items()}
        tag = f"[{one.label}]"
        if "plain" in rps:
            _cost_targets(section, tag, results[one.label])
        if "slow_plain" not in rps:
            continue
        section.note(
            f"{tag} the most any page served through Flask's request cycle can reach: "
            f"Flask's floor / (g) uncached = {rps['flask_floor'] / rps['slow_plain']:.1f}x"
        )
        for variant, how in (("slow_cached", ""), ("slow_public", ", fast path")):
            ratio = rps[variant] / rps["slow_plain"]
            what = f"{tag} (g) 20 ms view cached{how} / uncached"
            # The target is taken where the workers have the machine's cores (see above).
            if one.worker_class == "sync" and not (one.pinned and PIN):
                section.target(what, ratio, 45, at_least=True)
            else:
                section.note(f"{what} = {ratio:.1f}")
    errors = sum(f["errors"] for r in results.values() for f in r.values())
    section.check("no failed requests", errors == 0, f"{errors} non-2xx or socket errors")


_PAIRS = (
    ("(b)/(a)", "(b) cached / (a) plain", "cached", "plain", 1.0),
    ("(b)/(d)", "(b) cached / (d) Flask-Caching RedisCache", "cached", "flask_caching_redis", 1.3),
    ("(c)/(f)", "(c) fast path / (f) raw WSGI", "public", "raw_wsgi", 0.9),
)
"""The cost targets: short name, label, numerator, denominator, threshold."""


def _cost_targets(section: Section, tag: str, figures: dict[str, dict[str, Any]]) -> None:
    """The targets that compare what variants cost per request: (b)/(a), (b)/(d), (c)/(f).

    Each is the median of the pair's ratios within a repetition (the two were served one
    right after the other); every pair's ratio, and the ratios of the two variants'
    medians, follow in notes, so that a run too noisy to judge by says so.
    """
    of_medians, each_pair = [], []
    for short, label, top, bottom, threshold in _PAIRS:
        pairs = zip(figures[top]["runs"], figures[bottom]["runs"], strict=True)
        ratios = [a / b for a, b in pairs]
        section.target(
            f"{tag} {label}, paired runs", statistics.median(ratios), threshold, at_least=True
        )
        each_pair.append(f"{short} {' / '.join(f'{r:.2f}' for r in ratios)}")
        of_medians.append(f"{short} {figures[top]['rps'] / figures[bottom]['rps']:.3f}")
    section.note(f"{tag} every pair's ratio, run by run: {'; '.join(each_pair)}")
    section.note(f"{tag} the same ratios of the variants' medians: {', '.join(of_medians)}")
    cpu = {variant: f["cpu_us"] for variant, f in figures.items()}
    section.note(
        f"{tag} the same ratios from gunicorn's CPU time per request (steadier on a "
        f"shared machine): (b)/(a) {cpu['plain'] / cpu['cached']:.2f}, "
        f"(c)/(f) {cpu['raw_wsgi'] / cpu['public']:.2f}"
    )


class Gunicorn:
    """One gunicorn master with two workers serving one variant.

    ``app`` and ``path`` let another benchmark serve its own app (``bench.ratelimit_load``).
    """

    def __init__(
        self,
        variant: str,
        redis_url: str,
        worker_class: str,
        extra: list[str],
        *,
        app: str = "bench.http_app:create_app()",
        path: str = "/item",
        pinned: bool = True,
    ) -> None:
        self.port = free_port()
        self.path = path
        env = dict(os.environ, BENCH_VARIANT=variant, BENCH_REDIS_URL=redis_url)
        # Each gthread worker takes half the connections (bench/gunicorn.conf.py).
        env["BENCH_WORKER_CONNECTIONS"] = str(max(1, CONNECTIONS // 2))
        command = [sys.executable, "-m", "gunicorn", "-c", str(CONFIG)]
        command += ["-w", "2", "-k", worker_class, *extra]
        command += ["-b", f"127.0.0.1:{self.port}", "--log-level", "warning"]
        command += [app]
        self._command, self._env, self._pin = command, env, pinned
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gunicorn:
        command = _pinned(self._command, range(SERVER_CORE, CORES)) if self._pin else self._command
        self._process = subprocess.Popen(command, env=self._env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get_page(self.port, self.path)[0] == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"gunicorn did not answer on port {self.port}")

    def warm(self) -> tuple[str, bytes]:
        """Fill both workers' L1; return the X-Cache header and body the variant answers."""
        x_cache, body = "", b""
        for _ in range(40):
            _, headers, body = get_page(self.port, self.path)
            x_cache = headers.get("x-cache", "")
        return x_cache, body

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the master and its workers."""
        assert self._process is not None
        pids = [self._process.pid, *_children(self._process.pid)]
        return sum(_cpu_seconds(pid) for pid in pids)

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            stop(self._process, grace=15)


def stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """Stop gunicorn gracefully (SIGTERM); kill it if it takes over ``grace`` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (gunicorn's workers), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_page(
    port: int, path: str = "/item", timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def wrk_load(
    port: int, duration: float, path: str = "/item", *, pinned: bool = True
) -> dict[str, float]:
    """``wrk`` for ``duration`` seconds; ``pinned``: on :data:`LOAD_CORES`, a thread each.

    Pinned only when gunicorn is: a load generator left free shares the server's core
    whenever the scheduler puts one of its threads there, and then measures the
    scheduler rather than the server (its requests/s drift between variants by more
    than the variants differ).
    """
    pin = pinned and PIN
    threads = min(len(LOAD_CORES), 2) if pin else 2
    command = ["wrk", f"-t{threads}", f"-c{CONNECTIONS}", f"-d{duration:g}s"]
    command.append(f"http://127.0.0.1:{port}{path}")
    if pin:
        command = _pinned(command, LOAD_CORES)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket:
        errors += sum(int(n) for n in socket.groups())
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "errors": errors, "requests": requests}


def python_load(
    port: int, duration: float, path: str = "/item", *, pinned: bool = True
) -> dict[str, float]:
    """Keep-alive GETs from CONNECTIONS threads for ``duration`` seconds.

    ``pinned``: each thread runs on :data:`LOAD_CORES` only (see :func:`wrk_load`).
    """
    counts = [0] * CONNECTIONS
    errors = [0] * CONNECTIONS
    deadline = time.monotonic() + duration

    def client(index: int) -> None:
        if pinned and PIN:
            os.sched_setaffinity(0, LOAD_CORES)  # this thread's, on Linux
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while time.monotonic() < deadline:
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                counts[index] += 1
                errors[index] += response.status != 200
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {"rps": sum(counts) / elapsed, "errors": sum(errors), "requests": sum(counts)}
