"""Run test code in several real worker processes.

Workers start with ``spawn`` by default, so they do not inherit pytest's threads or
locks; ``start_method="fork"`` is there for code that must see the parent's state.

One-shot work::

    from tests.procs import run_in_processes

    def add(a: int, b: int) -> int:        # module level, so a spawned child imports it
        return a + b

    assert run_in_processes(add, [(1, 2), (3, 4)]) == [3, 7]

Coordinated, long-running workers get a :class:`GroupSync` as their first argument::

    def listener(sync: GroupSync, url: str) -> int:
        ...subscribe...
        sync.signal_ready()                # parent's wait_ready() returns once all did
        sync.barrier.wait(5)               # the workers go on together
        while not sync.stop.is_set():
            ...
        return seen

    with ProcessGroup(listener, [(url,)] * 3) as group:
        group.wait_ready(5)
        ...publish...
        group.stop()
        results = group.join(10)

A worker that raises makes the parent raise :class:`WorkerError` (an ``AssertionError``)
carrying the worker's traceback text; a worker still running at the deadline is killed
and :class:`WorkerTimeout` is raised. Either way every other worker is killed too.
Targets must be module-level functions of an importable module, and their arguments and
return values picklable; ``tests.*`` modules are importable in the workers because the
repository root is put on ``sys.path`` (which ``spawn`` hands to its children).
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier, Event, Semaphore
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from tiered_cache._embedded import can_die_with_parent, die_with_parent

__all__ = [
    "GroupSync",
    "ProcessGroup",
    "StartMethod",
    "WorkerError",
    "WorkerTimeout",
    "can_die_with_parent",
    "die_with_parent",
    "run_in_processes",
]

StartMethod = Literal["spawn", "fork"]
REPO_ROOT = Path(__file__).resolve().parents[1]
_GRACE = 2.0


class WorkerError(AssertionError):
    """A worker raised, or exited without a result; the message holds its traceback."""

    def __init__(self, message: str, *, index: int, traceback_text: str = "") -> None:
        super().__init__(message)
        self.index = index
        self.traceback_text = traceback_text


class WorkerTimeout(WorkerError):
    """A worker was still running at the deadline; all workers were killed."""


@dataclass(frozen=True)
class GroupSync:
    """What each :class:`ProcessGroup` worker receives as its first argument.

    :ivar index: this worker's position in ``args_list``.
    :ivar size: how many workers the group has.
    :ivar barrier: a barrier for the workers only (``size`` parties).
    :ivar stop: set by :meth:`ProcessGroup.stop`; long-running loops poll it.
    """

    index: int
    size: int
    barrier: Barrier
    stop: Event
    ready: Semaphore

    def signal_ready(self) -> None:
        """Tell the parent this worker is set up (see :meth:`ProcessGroup.wait_ready`)."""
        self.ready.release()


@dataclass
class _Worker:
    index: int
    args: tuple[Any, ...]
    process: BaseProcess
    conn: Connection
    outcome: tuple[str, Any] | None = None


def run_in_processes(
    target: Callable[..., Any],
    args_list: Iterable[Sequence[Any]],
    *,
    timeout: float = 60.0,
    start_method: StartMethod = "spawn",
) -> list[Any]:
    """Run ``target(*args)`` in one new process per ``args`` and return the results in order.

    :param target: a module-level function of an importable module.
    :param args_list: one argument tuple per worker.
    :param timeout: seconds for all workers together.
    :param start_method: ``"spawn"`` (default) or ``"fork"``.
    :returns: the return values, in the order of ``args_list``.
    :raises WorkerError: if a worker raised or died; the message has its traceback.
    :raises WorkerTimeout: if the workers did not finish in time (all were killed).
    """
    with ProcessGroup(target, args_list, start_method=start_method, pass_sync=False) as group:
        return group.join(timeout)


class ProcessGroup:
    """Workers that start together and are always killed when the ``with`` block ends.

    :param target: a module-level function; called as ``target(sync, *args)`` with a
        :class:`GroupSync`, or ``target(*args)`` when ``pass_sync`` is false.
    :param args_list: one argument tuple per worker.
    :param start_method: ``"spawn"`` (default) or ``"fork"``.
    """

    def __init__(
        self,
        target: Callable[..., Any],
        args_list: Iterable[Sequence[Any]],
        *,
        start_method: StartMethod = "spawn",
        pass_sync: bool = True,
    ) -> None:
        if start_method != "fork":
            _check_importable(target)
        self._target = target
        self._args = [tuple(args) for args in args_list]
        self._ctx: BaseContext = multiprocessing.get_context(start_method)
        self._sync_parts: tuple[Barrier, Event, Semaphore] | None = None
        if pass_sync:
            size = max(len(self._args), 1)
            self._sync_parts = (self._ctx.Barrier(size), self._ctx.Event(), self._ctx.Semaphore(0))
        self._workers: list[_Worker] = []

    @property
    def pids(self) -> list[int | None]:
        """The workers' process ids, in order."""
        return [worker.process.pid for worker in self._workers]

    def start(self) -> None:
        """Start every worker (once)."""
        if self._workers:
            raise RuntimeError("this ProcessGroup was already started")
        _ensure_repo_on_path()
        tie = can_die_with_parent()
        for index, args in enumerate(self._args):
            reader, writer = self._ctx.Pipe(duplex=False)
            sync = self._sync(index)
            process = self._ctx.Process(  # type: ignore[attr-defined]
                target=_child_main,
                args=(writer, os.getpid(), tie, self._target, args, sync),
                name=f"worker-{index}",
            )
            self._workers.append(_Worker(index, args, process, reader))
            process.start()
            # Our copy of the write end must go, or a dead child would never read as EOF.
            writer.close()

    def stop(self) -> None:
        """Set the workers' ``sync.stop`` event."""
        self._parts()[1].set()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until every worker has called ``sync.signal_ready()``.

        :raises WorkerError: if a worker failed first.
        :raises WorkerTimeout: if not all were ready in time (all workers are killed).
        """
        deadline = time.monotonic() + timeout
        for _ in self._workers:
            while not self._parts()[2].acquire(timeout=0.05):
                self._check_failures()
                if time.monotonic() > deadline:
                    self._fail_timeout("signal_ready()", timeout)

    def join(self, timeout: float = 60.0) -> list[Any]:
        """Wait for every worker's return value.

        :returns: the return values, in the order of ``args_list``.
        :raises WorkerError: as soon as one worker fails (the others are killed).
        :raises WorkerTimeout: if some are still running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while pending := [w for w in self._workers if w.outcome is None]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail_timeout("a result", timeout)
            waitables = [w.conn for w in pending] + [w.process.sentinel for w in pending]
            multiprocessing.connection.wait(waitables, timeout=remaining)
            self._check_failures()
        for worker in self._workers:
            worker.process.join(_GRACE)
        return [worker.outcome[1] for worker in self._workers if worker.outcome]

    def terminate(self) -> None:
        """Kill every worker still running and release the pipes; idempotent."""
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.kill()
        for worker in self._workers:
            worker.process.join(_GRACE)
            worker.conn.close()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.terminate()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()

    def _sync(self, index: int) -> GroupSync | None:
        if self._sync_parts is None:
            return None
        return GroupSync(index, len(self._args), *self._sync_parts)

    def _parts(self) -> tuple[Barrier, Event, Semaphore]:
        if self._sync_parts is None:
            raise RuntimeError("this ProcessGroup was created with pass_sync=False")
        return self._sync_parts

    def _check_failures(self) -> None:
        """Collect whatever workers have sent; raise on the first failure."""
        for worker in self._workers:
            if worker.outcome is None:
                worker.outcome = _poll_outcome(worker)
            if worker.outcome is not None and worker.outcome[0] != "ok":
                if self._sync_parts is not None:
                    self._sync_parts[0].abort()
                self.terminate()
                raise WorkerError(
                    f"{self._describe(worker)} failed:\n{worker.outcome[1]}",
                    index=worker.index,
                    traceback_text=worker.outcome[1],
                )

    def _fail_timeout(self, waiting_for: str, timeout: float) -> None:
        hung = [w for w in self._workers if w.process.is_alive()]
        for worker in hung:
            # Workers registered faulthandler on SIGUSR1: their stacks land on stderr.
            if worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGUSR1)
        time.sleep(0.1)
        self.terminate()
        names = ", ".join(self._describe(w) for w in hung) or "none alive"
        raise WorkerTimeout(
            f"timed out after {timeout} s waiting for {waiting_for}; killed: {names} "
            "(stacks of those already running were dumped to stderr)",
            index=hung[0].index if hung else -1,
        )

    def _describe(self, worker: _Worker) -> str:
        name = f"{self._target.__module__}.{self._target.__qualname__}"
        return f"worker {worker.index} (pid {worker.process.pid}, {name}{worker.args!r})"


def _poll_outcome(worker: _Worker) -> tuple[str, Any] | None:
    """The worker's message if one arrived, a failure if it died without one, else None."""
    try:
        if worker.conn.poll():
            outcome: tuple[str, Any] = worker.conn.recv()
            return outcome
    except (EOFError, OSError):
        pass
    else:
        if worker.process.is_alive():
            return None
    worker.process.join(_GRACE)
    return ("died", f"exited with code {worker.process.exitcode} before returning a result")


def _child_main(
    conn: Connection,
    parent_pid: int,
    tie_to_parent: bool,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    sync: GroupSync | None,
) -> None:
    """Worker entry point: run the target and send back ``("ok", value)`` or a traceback."""
    if tie_to_parent:
        die_with_parent()
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    # fd 2, not sys.stderr: under fork the inherited sys.stderr may be pytest's capture
    # object, which has no file descriptor.
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        faulthandler.register(signal.SIGUSR1, file=2, all_threads=True)
    try:
        outcome: tuple[str, Any] = ("ok", target(*args) if sync is None else target(sync, *args))
    except BaseException:
        outcome = ("error", traceback.format_exc())
    try:
        conn.send(outcome)
    except Exception:
        conn.send(("error", f"could not send the result back:\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _check_importable(target: Callable[..., Any]) -> None:
    """Fail early, and clearly, on targets a spawned child could not import."""
    qualname = getattr(target, "__qualname__", "")
    if "<" in qualname or not getattr(target, "__module__", None):
        raise TypeError(
            f"{target!r} must be a module-level function of an importable module under "
            "the 'spawn' start method (no lambdas, closures or nested functions)"
        )


def _ensure_repo_on_path() -> None:
    """Put the repository root on sys.path, which spawn copies into every child."""
    entries = {Path(entry or ".").resolve() for entry in sys.path}
    if REPO_ROOT not in entries:
        sys.path.append(str(REPO_ROOT))
