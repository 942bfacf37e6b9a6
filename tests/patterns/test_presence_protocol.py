"""Presence without sockets: the heartbeat schedule and the directory table, on a hand-moved clock."""

import pytest

from zmqkit import ConfigurationError
from zmqkit.patterns.presence.protocol import Announcements, DirectoryTable, check_announcement


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _body(status: str = "up", **extra: object) -> dict[str, object]:
    return {"service": "orders", "endpoint": "tcp://h:1", "status": status, "meta": {}, "interval": 1.0, **extra}


def test_heartbeats_are_due_once_per_interval() -> None:
    clock = FakeClock()
    ann = Announcements("node", interval=2.0, clock=clock)
    ann.announce(check_announcement("orders", "tcp://h:1", "up", None))
    assert [t for t, _ in ann.due()] == ["_zk.presence.orders"]
    assert ann.due() == [] and ann.wait() == 2.0
    clock.now += 2.0
    assert len(ann.due()) == 1
    ann.announce(check_announcement("orders", "tcp://h:1", "down", None))
    clock.now += 2.0
    assert ann.due() == []


def test_withdraw_says_down_for_everything() -> None:
    ann = Announcements("node", clock=FakeClock())
    ann.announce(check_announcement("a", "tcp://h:1", "up", None))
    ann.announce(check_announcement("b", "tcp://h:2", "maintenance", {"why": "disk"}))
    assert sorted((b["service"], b["status"]) for _, b in ann.withdraw()) == [("a", "down"), ("b", "down")]
    assert ann.withdraw() == []


def test_entries_expire_after_missed_heartbeats() -> None:
    clock = FakeClock()
    table = DirectoryTable(misses=3, clock=clock)
    assert [k for k, _ in table.apply(_body())] == ["added"]
    clock.now += 2.9
    assert table.expire() == [] and table.lookup("orders")
    assert table.apply(_body()) == []  # a heartbeat: nothing changed, deadline moves
    clock.now += 2.9
    assert table.lookup("orders")
    clock.now += 0.2
    assert table.lookup("orders") == []  # past the deadline: invisible even before the sweep
    assert [k for k, _ in table.expire()] == ["expired"]


def test_maintenance_is_visible_and_down_removes_at_once() -> None:
    table = DirectoryTable(clock=FakeClock())
    table.apply(_body())
    assert [k for k, _ in table.apply(_body("maintenance"))] == ["changed"]
    assert [e.status for e in table.lookup("orders")] == ["maintenance"]
    assert table.lookup("orders", status="up") == []
    assert [k for k, _ in table.apply(_body("down"))] == ["removed"]
    assert table.lookup() == []


def test_up_instances_come_first() -> None:
    table = DirectoryTable(clock=FakeClock())
    table.apply(_body("maintenance", endpoint="tcp://a:1"))
    table.apply(_body("up", endpoint="tcp://b:1"))
    assert [e.endpoint for e in table.lookup("orders")] == ["tcp://b:1", "tcp://a:1"]


@pytest.mark.parametrize(
    "body", [b"raw", {"service": "x"}, _body("sleeping"), _body(interval=0), _body(meta=[1]), _body(service="")]
)
def test_malformed_announcements_are_counted(body: object) -> None:
    table = DirectoryTable(clock=FakeClock())
    assert table.apply(body) == []
    assert table.malformed == 1


@pytest.mark.parametrize(
    ("args", "bad"),
    [(("", "tcp://h:1", "up", None), "''"), (("a", "tcp://h:1", "gone", None), "'gone'"), (("a", 5, "up", None), "5")],
)
def test_bad_announce_arguments(args: tuple[object, ...], bad: str) -> None:
    with pytest.raises(ConfigurationError, match=bad):
        check_announcement(*args)


def test_bad_intervals() -> None:
    with pytest.raises(ConfigurationError, match="-1"):
        Announcements("n", interval=-1)
    with pytest.raises(ConfigurationError, match="0"):
        DirectoryTable(misses=0)
