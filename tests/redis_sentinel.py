"""A real Redis Sentinel watching a real master, both :class:`RedisServer` processes."""

from __future__ import annotations

from pathlib import Path

from tests.redis_harness import RedisServer

SERVICE = "tcmaster"


class SentinelServer(RedisServer):
    """``redis-server <config> --sentinel`` monitoring ``master`` as :data:`SERVICE`.

    Sentinel rewrites its configuration file, so it gets one of its own in its directory.
    """

    def __init__(self, master: RedisServer) -> None:
        super().__init__()
        self.master = master

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the monitored service."""
        return f"redis+sentinel://{self.host}:{self.port}/{SERVICE}"

    def _command(self, directory: Path) -> list[str]:
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind {self.host}\n"
            f"sentinel monitor {SERVICE} {self.master.host} {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 5000\n",
            encoding="utf-8",
        )
        return [
            self.binary, str(config), "--sentinel",
            "--dir", str(directory), "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
