"""Benchmark 7b: instructions a gunicorn worker executes per request, counted by valgrind.

Requests/s on a shared machine move with whatever else the machine is doing; the
instructions a request costs do not. Each variant is served by one sync worker under
``valgrind --tool=callgrind``, which counts the instructions every thread of every
process executes. The worker's main thread (the one that serves requests) answers
``WARM + n`` requests in two runs, one with ``n = FEW`` and one with ``n = MANY``; the
difference between the two totals, divided by ``MANY - FEW``, is what one request costs,
with start-up, warm-up and shutdown cancelled out. Background threads (the bus
listener, the stats publisher) are left out: they run on a timer, and under valgrind a
request takes long enough that their work would be charged to requests that do not
cause it. Kernel work (the sockets) is not counted either: valgrind only sees user
space.

The variants are (f), the raw WSGI callable; (f) sending the three headers every hit
sends (``ETag``, ``X-Cache``, ``Age``); (c), the fast path; and the two variants of target
(b)/(a): (a), the plain Flask view, and (b), a hit through Flask. So the table says how
much of the distance between (c) and (f) is gunicorn handling the headers the SPEC asks
for, and how much is the fast path's own work; and what a hit through Flask costs
against running the view, free of what requests/s also measure under sync workers:
gunicorn (27 here) waits for the client to close the connection after each
response, and how often that wait blocks the worker depends on timing, not on cost.
Skipped, saying so, without valgrind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.redis_harness import free_port

from . import http_app
from ._report import Section
from ._setup import Context
from .http_load import CONFIG, ROOT, get_page, stop

NAME = "http-instructions"
TITLE = "7b. HTTP: instructions per request in a gunicorn worker (valgrind): (c)/(f), (b)/(a)"
VARIANTS = {
    "raw_wsgi": http_app.VARIANTS["raw_wsgi"],
    "raw_wsgi_hit_headers": "(f) + a hit's ETag, X-Cache and Age headers",
    "public": http_app.VARIANTS["public"],
    "plain": http_app.VARIANTS["plain"],
    "cached": http_app.VARIANTS["cached"],
}
WARM = 20  # requests before the counted ones: L1 filled, the fast path's location known
STARTUP = 180.0  # seconds a worker may take to answer its first request under valgrind


def run(ctx: Context) -> Section:
    """Count each variant's instructions per request; compare them with (f)'s."""
    section = Section(NAME, TITLE)
    if shutil.which("valgrind") is None:
        section.note("valgrind is not installed (apt-get install valgrind): skipped")
        return section
    few, many = (50, 250) if ctx.settings.quick else (200, 1200)
    section.note(
        f"one sync worker under callgrind; its main thread's instructions for {many} "
        f"requests minus those for {few}, over {many - few}; sequential requests, "
        "a new connection each (sync workers close them)"
    )
    runs = [(variant, n) for variant in VARIANTS for n in (few, many)]
    # Instructions do not depend on what else runs: two runs at a time use both cores.
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        counted = dict(
            zip(runs, pool.map(lambda r: _count(r[0], r[1], ctx.redis_url), runs), strict=True)
        )
    per_request = {
        variant: (counted[variant, many][0] - counted[variant, few][0]) / (many - few)
        for variant in VARIANTS
    }
    raw = per_request["raw_wsgi"]
    rows = [
        [
            label,
            f"{per_request[variant]:,.0f}",
            f"{per_request[variant] - raw:+,.0f}",
            f"{raw / per_request[variant]:.3f}",
            counted[variant, many][1] or "-",
        ]
        for variant, label in VARIANTS.items()
    ]
    headers = ["variant", "instructions/request", "vs (f)", "(f)/variant", "X-Cache"]
    section.table("gunicorn -w 1 -k sync, main thread, valgrind callgrind", headers, rows)
    headers_cost = per_request["raw_wsgi_hit_headers"] - raw
    own = per_request["public"] - per_request["raw_wsgi_hit_headers"]
    section.note(
        f"of the {per_request['public'] - raw:,.0f} instructions (c) costs beyond (f), "
        f"{headers_cost:,.0f} are gunicorn checking and writing the three headers and "
        f"{own:,.0f} the fast path's own work; (c)/(f) if instructions were all a "
        f"request cost: {raw / per_request['public']:.3f}"
    )
    section.note(
        f"a hit through Flask, (b), takes {per_request['cached']:,.0f} instructions and the "
        f"plain view, (a), {per_request['plain']:,.0f}: (b)/(a) if instructions were all a "
        f"request cost: {per_request['plain'] / per_request['cached']:.3f}"
    )
    section.data["instructions_per_request"] = per_request
    return section


def _count(variant: str, requests: int, redis_url: str) -> tuple[int, str]:
    """The worker's main-thread instructions for WARM + ``requests`` requests, and the
    X-Cache header of the last answer."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as out:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}/callgrind.%p",
            "-q",
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(CONFIG),
            "-w",
            "1",
            "-k",
            "sync",
            "-t",
            "600",  # valgrind slows everything down: no heartbeat timeout
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.http_app:create_app()",
        ]
        env = dict(os.environ, BENCH_VARIANT=variant, BENCH_REDIS_URL=redis_url)
        env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run
        process = subprocess.Popen(command, env=env, cwd=ROOT)
        try:
            _wait_for(port, process)
            x_cache = ""
            for _ in range(WARM - 1 + requests):
                x_cache = get_page(port, timeout=60)[1].get("x-cache", "")
        finally:
            stop(process, grace=120)  # valgrind writes its counts as the processes exit
        # Thread 1 of the process that is not the master (valgrind runs in its place).
        main_threads = [
            path
            for path in Path(out).glob("callgrind.*-01")
            if path.name != f"callgrind.{process.pid}-01"
        ]
        if len(main_threads) != 1:
            raise RuntimeError(f"expected one worker's counts, found {main_threads}")
        return _total(main_threads[0]), x_cache


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until the worker answers (its first request counts as one of WARM)."""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn under valgrind exited with {process.returncode}")
        try:
            if get_page(port, timeout=60)[0] == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"gunicorn under valgrind did not answer within {STARTUP:g} s")


def _total(path: Path) -> int:
    """The instruction total of one callgrind output file."""
    found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in {path}")
    return int(found.group(1))
