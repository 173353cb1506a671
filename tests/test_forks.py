"""The registry of objects renewed in a forked child (tiered_cache._forks)."""

from __future__ import annotations

import gc
import json
import os

from tiered_cache._forks import forget, registered, renew_after_fork


class Owner:
    """Something that owns one process's state; it notes each renewal."""

    renewed: list[str] = []  # noqa: RUF012 - shared on purpose: the child's record

    def __init__(self, name: str) -> None:
        self.name = name

    def renew(self) -> None:
        Owner.renewed.append(self.name)


def in_child() -> list[str]:
    """Fork; the child answers with the renewals that ran in it, in their order."""
    Owner.renewed = []
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        os.write(write, json.dumps(Owner.renewed).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    renewed: list[str] = json.loads(answer)
    return renewed


def test_a_child_renews_each_live_object_in_the_order_they_registered() -> None:
    owners = [Owner(name) for name in ("cache", "routes", "limiter")]
    for owner in owners:
        renew_after_fork(owner, Owner.renew)
    assert in_child() == ["cache", "routes", "limiter"]
    assert Owner.renewed == []  # not in the parent
    assert registered(Owner) == owners
    for owner in owners:
        forget(owner)


def test_a_forgotten_object_is_not_renewed() -> None:
    kept, closed = Owner("kept"), Owner("closed")
    renew_after_fork(kept, Owner.renew)
    renew_after_fork(closed, Owner.renew)
    forget(closed)
    forget(closed)  # twice is fine
    assert in_child() == ["kept"]
    assert registered(Owner) == [kept]
    forget(kept)


def test_the_registry_does_not_keep_an_object_alive() -> None:
    renew_after_fork(Owner("dropped"), Owner.renew)
    gc.collect()
    assert registered(Owner) == []
    assert in_child() == []
