"""Keys as sent (one encoding for both clients and the ring), canonical arguments, the one TTL check."""

import math
from collections import namedtuple

import cachetools
import pytest

from zmqkit import ConfigurationError
from zmqkit.cache import CacheClient
from zmqkit.cache.keys import canonical, key_bytes
from zmqkit.cache.store import MAX_KEY, Store, check_ttl
from zmqkit.testing import CacheCluster


def test_keys_that_differ_only_in_type_are_different_keys() -> None:
    assert key_bytes("5") == b"5" == key_bytes(b"5")  # str and bytes: the bytes other clients send
    assert key_bytes(5) == b"\xffi5" and key_bytes(-5) == b"\xffi-5"
    assert key_bytes((5,)) != key_bytes("(5,)") != key_bytes(("5",)) and key_bytes((5,)) != key_bytes((5.0,))
    assert key_bytes(cachetools.keys.hashkey(1, "a"))[:2] == b"\xfft"
    long = key_bytes(tuple(range(200)))
    assert long[:2] == b"\xffh" and len(long) <= MAX_KEY


@pytest.mark.parametrize(
    ("key", "named"),
    [(True, "not bool"), (5.0, "not float"), (None, "not NoneType"), (object(), "not object"), ({1}, "not set")],
)
def test_other_key_types_are_refused_by_name(key: object, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        key_bytes(key)


def test_key_sizes_and_the_reserved_byte() -> None:
    with pytest.raises(ConfigurationError, match="may not start with 0xFF"):
        key_bytes(b"\xffi5")  # would be the int key 5
    with pytest.raises(ConfigurationError, match="1 to 250 bytes"):
        key_bytes("x" * 251)
    with pytest.raises(ConfigurationError, match="at most 248 digits"):
        key_bytes(10**250)
    assert len(key_bytes(10**247)) == MAX_KEY


def test_canonical_is_order_free_and_typed() -> None:
    assert canonical(frozenset(["b", "a", "c"])) == canonical(frozenset(["c", "a", "b"]))
    assert canonical({"b": 1, "a": {2, 1}}) == canonical({"a": {1, 2}, "b": 1})
    assert canonical([1]) != canonical((1,)) != canonical({1}) != canonical(frozenset({1}))
    assert canonical(1) != canonical(True) != canonical(1.0) != canonical("1") != canonical(b"1")
    assert canonical(("ab", "c")) != canonical(("a", "bc"))  # length-prefixed
    Point = namedtuple("Point", "x y")
    assert canonical(Point(1, 2)) == canonical((1, 2))
    with pytest.raises(ConfigurationError, match="object has no canonical encoding"):
        canonical((1, object()))


def test_memoize_refuses_an_argument_it_cannot_encode(cache_cluster: CacheCluster) -> None:
    cache = cache_cluster.client()

    @cache.memoize(ttl=60)
    def f(x: object) -> int:
        return 1

    assert f({"a": frozenset({1, 2})}) == 1
    with pytest.raises(ConfigurationError, match="Widget has no canonical encoding"):
        f(type("Widget", (), {})())


@pytest.mark.parametrize("ttl", [math.nan, math.inf, -math.inf, -1, -0.5, True, "60", None, 2**32, 40 * 86400])
def test_every_bad_ttl_is_a_configuration_error_with_its_value(ttl: object) -> None:
    with pytest.raises(ConfigurationError, match=f"bad ttl {ttl!r}"):
        check_ttl(ttl)
    with pytest.raises(ConfigurationError, match="bad ttl"):
        Store().set(b"k", b"\x00v", ttl)  # type: ignore[arg-type]
    client = CacheClient(["tcp://127.0.0.1:5555"])
    try:
        with pytest.raises(ConfigurationError, match="bad ttl"):
            client.set("k", "v", ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="bad ttl"):
            client.memoize(ttl=ttl)  # type: ignore[arg-type]
    finally:
        client.close()


def test_good_ttls() -> None:
    assert check_ttl(0) == 0 and check_ttl(0.5) == 1 and check_ttl(30 * 86400) == 30 * 86400
    assert check_ttl(1_700_000_000) == 1_700_000_000  # a unix time
