"""A real ``gunicorn -c gunicorn.conf.py`` for end-to-end tests, and an HTTP client for it.

Usage::

    with GunicornServer(env={"TIERED_CACHE_REDIS_URL": url, ...}) as server:
        response = server.request("GET", "/products/1")   # a new connection each time
        response.status, response.headers["X-Worker-Pid"], response.json()
        server.worker_pids()                               # from /proc
        server.hup()

gunicorn runs in a session (process group) of its own, writes its logs to files in a
private directory, and is always stopped: SIGTERM to the master, then SIGKILL to the whole
group. ``namespace=True`` runs it inside a private network namespace (``unshare -rn``),
where 127.0.0.1:6379 is closed; it then listens on a unix socket, which the test reaches
from outside the namespace because unix sockets live in the file system.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.redis_harness import free_port
from tests.waiting import until

REPO_ROOT = Path(__file__).resolve().parents[1]
GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


def gunicorn_binary() -> str:
    """The venv's gunicorn, else the one on PATH."""
    if os.access(GUNICORN, os.X_OK):
        return str(GUNICORN)
    found = shutil.which("gunicorn")
    if found is None:
        raise RuntimeError("gunicorn is not installed (pip install -e '.[test]')")
    return found


def can_unshare() -> str | None:
    """None when ``unshare -rn`` works here, else why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (iproute2) is not installed"
    command = ["unshare", "-rn", "sh", "-c", "ip link set lo up"]
    probe = subprocess.run(command, check=False, capture_output=True, timeout=10)
    if probe.returncode != 0:
        return f"unshare -rn fails here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def children_of(pid: int) -> set[int]:
    """The live (non-zombie) child processes of ``pid``, read from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def accept_queue(port: int) -> int:
    """Connections waiting to be accepted by the IPv4 listener on ``port`` (Linux)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            return int(queues.split(":")[1], 16)  # a listener's rx_queue: its accept queue
    raise LookupError(f"nothing listens on port {port}")


@dataclass
class Response:
    """One HTTP answer."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def pid(self) -> int:
        """The worker that answered (the example app's ``X-Worker-Pid``)."""
        return int(self.headers["X-Worker-Pid"])


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = unix_connection(self._path, self.timeout)


def unix_connection(path: str, timeout: float | None) -> socket.socket:
    """A stream socket connected to the unix socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class GunicornServer:
    """``gunicorn -c gunicorn.conf.py`` (the example app) as a subprocess.

    :param env: variables added to (or, with value None, removed from) this environment.
    :param workers: the number of workers.
    :param namespace: run inside ``unshare -rn`` and listen on a unix socket.
    :param args: more gunicorn arguments.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str | None] | None = None,
        workers: int = 4,
        namespace: bool = False,
        args: Sequence[str] = (),
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tiered-cache-gunicorn-"))
        self.workers = workers
        self.namespace = namespace
        self.port = None if namespace else free_port()
        self.socket_path = str(self.directory / "gunicorn.sock") if namespace else None
        self.env = self._environment(dict(env or {}))
        self.args = tuple(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def _environment(self, changes: dict[str, str | None]) -> dict[str, str]:
        env = dict(os.environ)
        # Quiet and fast by default; a test that wants these sets them.
        env.update({"ACCESS_LOG": "/dev/null", "PYTHONUNBUFFERED": "1"})
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    @property
    def bind(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The master's pid."""
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        gunicorn = [
            gunicorn_binary(),
            "-c", "gunicorn.conf.py",
            "--bind", self.bind,
            "--workers", str(self.workers),
            "--no-control-socket",  # its default path is shared by every gunicorn of the user
            *self.args,
        ]  # fmt: skip
        if not self.namespace:
            return gunicorn
        # `exec` keeps one process: the pid we hold is gunicorn's master.
        return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *gunicorn]

    def start(self) -> None:
        """Start gunicorn and wait until all its workers answer."""
        with (
            open(self.directory / "stdout.log", "wb") as out,
            open(self.directory / "stderr.log", "wb") as err,
        ):
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        if not until(self._ready, START_TIMEOUT, 0.05):
            raise RuntimeError(f"gunicorn did not come up in {START_TIMEOUT} s:\n{self.log()}")

    def _ready(self) -> bool:
        if self.exited():
            raise RuntimeError(f"gunicorn exited:\n{self.log()}")
        if len(self.worker_pids()) < self.workers:
            return False
        try:
            return self.request("GET", "/", timeout=2).status == 200
        except OSError:
            return False

    def worker_pids(self) -> set[int]:
        """The master's live children that are gunicorn workers (not the embedded Redis)."""
        pids = set()
        for pid in children_of(self.pid):
            with contextlib.suppress(OSError):
                if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.add(pid)
        return pids

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Response:
        """One request on a new connection (so any worker may take it)."""
        conn: http.client.HTTPConnection
        if self.socket_path:
            conn = _UnixConnection(self.socket_path, timeout)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        sent_headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        started = time.monotonic()
        try:
            conn.request(method, path, body=data, headers=sent_headers)
            reply = conn.getresponse()
            content = reply.read()
        finally:
            conn.close()
        return Response(reply.status, reply.headers, content, time.monotonic() - started)

    def on_distinct_workers(
        self, path: str, count: int, *, headers: Mapping[str, str] | None = None
    ) -> list[Response]:
        """GET ``path`` ``count`` times at once, each answered by a different sync worker.

        Each request is sent but for its final blank line, so the sync worker that accepts
        it blocks reading it and cannot accept another; once every connection is accepted
        (the listener's accept queue is empty), each is held by a worker of its own, and
        they are completed. On a unix socket, whose accept queue is not shown here, the
        wait is a short sleep, and a round in which two requests still met one worker is
        sent again: then the answers of every round are returned, the last ``count``
        from different workers. On TCP there is one round.
        """
        assert 0 < count <= self.workers
        host = "localhost" if self.port is None else f"127.0.0.1:{self.port}"  # as request()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = "".join(line + "\r\n" for line in lines).encode()
        answers: list[Response] = []
        for _ in range(20):
            answers += self._held_round(head, count)
            if len({answer.pid for answer in answers[-count:]}) == count:
                return answers
        raise AssertionError(f"{count} requests never reached {count} different workers")

    def _held_round(self, head: bytes, count: int) -> list[Response]:
        socks = [self._connect(5.0) for _ in range(count)]
        try:
            for sock in socks:
                sock.sendall(head)
            if self.port is not None:
                port = self.port
                assert until(lambda: accept_queue(port) == 0, 5.0), "the workers did not accept"
            else:
                time.sleep(0.05)
            answers = []
            for sock in socks:
                started = time.monotonic()
                sock.sendall(b"\r\n")
                reply = http.client.HTTPResponse(sock)
                reply.begin()
                content = reply.read()
                elapsed = time.monotonic() - started
                answers.append(Response(reply.status, reply.headers, content, elapsed))
            return answers
        finally:
            for sock in socks:
                sock.close()

    def _connect(self, timeout: float) -> socket.socket:
        if self.socket_path:
            return unix_connection(self.socket_path, timeout)
        assert self.port is not None
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def hup(self) -> None:
        """Ask the master to reload (new workers, same listeners)."""
        os.kill(self.pid, signal.SIGHUP)

    def log(self) -> str:
        """gunicorn's error log (where our hooks write)."""
        with contextlib.suppress(OSError):
            return (self.directory / "stderr.log").read_text(errors="replace")
        return ""

    def kill_master(self) -> None:
        """SIGKILL the master alone (as the OOM killer would); it is not reaped here."""
        os.kill(self.pid, signal.SIGKILL)

    def exited(self) -> bool:
        """True once the master has exited; it is not reaped, so its group id stays ours."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            return True
        try:
            found = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return found is not None

    def stop(self) -> int | None:
        """SIGTERM the master and wait; then SIGKILL whatever is left of its group.

        :returns: the master's exit code (None if it had to be killed).
        """
        if self.proc is None:
            return None
        graceful = self.exited()
        if not graceful:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            graceful = until(self.exited, STOP_TIMEOUT, 0.02)
        self.kill()
        return self.proc.returncode if graceful else None

    def kill(self) -> None:
        """SIGKILL the master's whole process group, then reap the master.

        The master is reaped last: until then its pid, the group's id, cannot be reused.
        """
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.cleanup()
