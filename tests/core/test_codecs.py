import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqkit import ConfigurationError, DataError, ProtocolError, get_codec
from zmqkit.codecs import CODEC_IDS, unpack

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("bytes", b"\x00\xffraw"),
        ("str", "h\u00e9llo \u2603"),
        ("int", -(2**70)),
        ("float", 0.1),
        ("json", {"a": [1, 2.5, None, True, "x"]}),
        ("msgpack", {"a": [1, b"bin", None]}),
        ("pickle", {1, 2, 3}),
    ],
)
def test_round_trip_by_wire_id(name: str, value: object) -> None:
    codec = get_codec(name)
    codec_id, data = codec.pack(value)
    assert codec_id == CODEC_IDS[name]
    assert isinstance(data, bytes)
    assert unpack(codec_id, data, allow_pickle=name == "pickle") == value


@given(json_values)
def test_json_round_trip(value: object) -> None:
    codec = get_codec("json")
    assert unpack(*codec.pack(value)) == value


@given(st.one_of(st.binary(), st.text(), st.integers(), st.floats(allow_nan=False), json_values))
def test_auto_codec_keeps_the_type(value: object) -> None:
    codec_id, data = get_codec("auto").pack(value)
    back = unpack(codec_id, data)
    assert back == value and type(back) is type(value)


def test_auto_codec_nan_and_bool() -> None:
    auto = get_codec("auto")
    assert math.isnan(unpack(*auto.pack(float("nan"))))
    assert unpack(*auto.pack(True)) is True


def test_bytes_pass_through_unchanged() -> None:
    payload = bytes(range(256))
    assert get_codec("bytes").pack(payload) == (0, payload)


def test_pickle_refused_unless_opted_in() -> None:
    codec_id, data = get_codec("pickle").pack(ValueError("x"))
    with pytest.raises(ProtocolError, match="pickle"):
        unpack(codec_id, data)


def test_auto_does_not_pickle_unless_asked() -> None:
    with pytest.raises(ConfigurationError, match="json codec cannot encode"):
        get_codec("auto").pack({1, 2})
    codec_id, data = get_codec("auto+pickle").pack({1, 2})
    assert unpack(codec_id, data, allow_pickle=True) == {1, 2}


@pytest.mark.parametrize(
    ("codec_id", "data"),
    [(1, b"\xff"), (2, b"12x"), (3, b"nope"), (4, b"{"), (4, b"[" * 100_000), (5, b"\xc1"), (99, b"")],
    ids=["str", "int", "float", "json", "json-deep", "msgpack", "unknown"],
)
def test_malformed_payload_is_protocol_error(codec_id: int, data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(codec_id, data)


def test_unknown_codec_name() -> None:
    with pytest.raises(ConfigurationError, match="unknown codec 'yaml'"):
        get_codec("yaml")


def test_wrong_type_for_fixed_codec() -> None:
    with pytest.raises(ConfigurationError, match="str codec cannot encode int"):
        get_codec("str").encode(5)


@pytest.mark.parametrize(
    ("name", "value", "error", "says"),
    [
        ("int", 10**5000, DataError, "an int of 16610 bits is over the 4300 decimal digits"),
        ("auto", -(10**5000), DataError, "an int of 16610 bits"),
        ("json", {"n": [10**5000]}, DataError, "json codec cannot encode <dict that has no repr>"),
        ("msgpack", 2**70, DataError, "msgpack codec cannot encode 1180591620717411303424"),
        ("json", {1, 2}, ConfigurationError, "json codec cannot encode {1, 2}: Object of type set"),
    ],
    ids=["int", "auto", "json-nested", "msgpack", "json-set"],  # pytest's own ids would repr the long ints
)
def test_a_value_a_codec_refuses_is_a_zmqkit_error_naming_it(
    name: str, value: object, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=re.escape(says)):
        get_codec(name).pack(value)
