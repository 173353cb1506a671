"""The benchmarks' gunicorn configuration: one hook, every other setting on the command line.

gunicorn reads ``./gunicorn.conf.py`` when no ``-c`` is given, and the repository's is
the example app's (access log, hooks, four workers). The benchmarks pass ``-c`` with
this file so that what they measure under is on their command line, and here.
"""

from __future__ import annotations

import os
from typing import Any


def post_worker_init(worker: Any) -> None:
    """Let one worker hold at most ``BENCH_WORKER_CONNECTIONS`` connections at a time.

    A gthread worker keeps each keep-alive connection it accepted, so without a cap the
    worker that happens to run first may take all of the load generator's connections
    and leave the other idle: every run splits the load anew, and the split moves a run
    by more than the variants differ. With the cap at half the connections, each worker
    takes exactly half. gunicorn's ``--worker-connections`` caps the same count but also
    lowers how many idle keep-alive connections a worker keeps (``worker_connections -
    threads``), so it would close connections under load; this sets the cap alone.
    """
    cap = os.environ.get("BENCH_WORKER_CONNECTIONS")
    if cap:
        worker.worker_connections = int(cap)
