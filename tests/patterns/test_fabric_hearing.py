"""A member's hearing of its fabric, without sockets: silence from the fabric expires nothing, and a return
from silence gives every entry a fresh window; fabric servers without beats keep the old expiry."""

import pytest

from zmqkit.patterns.presence.hearing import Hearing, parse_beat
from zmqkit.patterns.presence.protocol import DirectoryTable


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _body(endpoint: str = "tcp://h:1") -> dict[str, object]:
    return {"service": "orders", "endpoint": endpoint, "status": "up", "meta": {}, "interval": 1.0}


def _member() -> tuple[FakeClock, Hearing, DirectoryTable]:
    clock = FakeClock()
    hearing = Hearing(clock, tracked=True)
    return clock, hearing, DirectoryTable(3, clock, horizon=hearing.horizon)


def test_with_no_fabric_server_connected_nothing_expires_and_the_return_renews_every_entry() -> None:
    clock, hearing, table = _member()
    assert hearing.connected(1)  # the first connection ends the time with none
    table.apply(_body())
    assert not hearing.connected(0)  # the only fabric server is gone
    clock.now += 60  # twenty expiry windows
    assert table.expire() == [] and [e.endpoint for e in table.lookup("orders")] == ["tcp://h:1"]
    assert hearing.connected(1)  # back: the caller renews the table
    table.renew()
    clock.now += 2.9  # inside the fresh window of 3 missed heartbeats
    assert table.expire() == []
    clock.now += 0.2
    assert [kind for kind, _ in table.expire()] == ["expired"]  # silent since the fabric came back: gone


def test_a_silent_fabric_server_that_beats_holds_expiry_and_a_message_after_the_gap_renews() -> None:
    clock, hearing, table = _member()
    hearing.connected(1)
    assert not hearing.message(beat=0.5)
    table.apply(_body())
    clock.now += 30  # the link is cut: no RST, the connection still counts, but no beat comes
    assert table.expire() == [] and table.lookup("orders")
    assert hearing.message(beat=0.5)  # healed: the first message ends a silence of more than two beats
    table.renew()
    clock.now += 2.0
    hearing.message(beat=0.5)
    assert table.expire() == []
    clock.now += 1.5
    hearing.message(beat=0.5)  # beats go on, the announcer stays silent: it expires
    assert [kind for kind, _ in table.expire()] == ["expired"]


def test_while_beats_come_an_instance_that_stops_expires_once_the_fabric_is_heard_past_its_deadline() -> None:
    clock, hearing, table = _member()
    hearing.connected(1)
    hearing.message(beat=0.5)
    table.apply(_body())
    clock.now += 3.2  # past the deadline, but nothing heard since: it may be the fabric that went quiet
    assert table.expire() == []
    hearing.message(beat=0.5)
    assert [kind for kind, _ in table.expire()] == ["expired"]


def test_fabric_servers_without_beats_expire_as_before_while_connected() -> None:
    clock, hearing, table = _member()
    hearing.connected(1)
    table.apply(_body())
    clock.now += 3.1
    assert [kind for kind, _ in table.expire()] == ["expired"]


def test_when_one_of_two_servers_leaves_the_other_must_beat_within_two_beats() -> None:
    clock, hearing, table = _member()
    hearing.connected(2)
    hearing.message(beat=1.0)
    table.apply(_body())
    assert not hearing.connected(1)
    clock.now += 1.0
    hearing.message(beat=1.0)  # the one left beats too: beats still count
    assert hearing.horizon() == clock.now
    clock.now += 1.0
    assert hearing.horizon() == clock.now - 1.0
    assert not hearing.connected(0)
    assert hearing.connected(2)  # back after a time with none: renew
    hearing.message(beat=1.0)
    hearing.connected(1)  # the one left sends no beats (an older server): after two beats, silence counts again
    clock.now += 2.5
    assert hearing.horizon() == clock.now


def test_links_without_connections_always_hear() -> None:
    clock = FakeClock()
    hearing = Hearing(clock, tracked=False)
    assert hearing.horizon() == clock.now
    clock.now += 5
    assert hearing.horizon() == clock.now


@pytest.mark.parametrize("body", [b"", b"x", b"0", b"-1", b"nan", b"inf", b"\xff"])
def test_a_bad_beat_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_beat(body)
    assert parse_beat(b"0.25") == 0.25
