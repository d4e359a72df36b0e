"""Property tests of the commit-protocol codec (protocols/control.py): encode/parse round trips for
every message type, split invariance of ControlReader, and recovery after garbage."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import control
from protocols.control import (
    MAX_LINE,
    ControlReader,
    Endpoint,
    Malformed,
    encode,
    parse_line,
)

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

uint = st.integers(min_value=0, max_value=2**64 - 1)
word = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
endpoint = st.builds(
    Endpoint,
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.integers(0, 65535))

messages = st.one_of(
    st.builds(control.Hello, uint, st.sampled_from(["agent", "healer", "admin"]), uint, word),
    st.just(control.Guard()),
    st.just(control.Unguard()),
    st.builds(control.Conn, uint, endpoint, endpoint),
    st.builds(control.Begin, uint, st.none() | uint),
    st.builds(lambda tx, cid, d, a, b: control.Io(tx, cid, d, min(a, b), max(a, b)),
              uint, uint, st.sampled_from(["in", "out"]), uint, uint),
    st.builds(control.Commit, uint),
    st.builds(control.Abort, uint, word),
    st.builds(control.Gradual, uint, uint),
    st.builds(control.Release, uint, uint),
    st.builds(control.Close, uint),
    st.builds(control.Ping, uint),
    st.just(control.Stats()),
    st.builds(control.Ok, text),
    st.builds(control.Err, word, text),
    st.builds(control.Pong, uint),
    st.builds(control.StatsReply, text.filter(bool)),
)


def read_all(chunks: list[bytes]) -> list[object]:
    reader = ControlReader()
    events = []
    for chunk in chunks:
        reader.receive_data(chunk)
        for _ in range(10_000):  # bounded: a reader that never says NEED_DATA fails, not hangs
            event = reader.next_event()
            if event is control.NEED_DATA:
                break
            events.append(event)
        else:
            raise AssertionError("ControlReader produced events without end")
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


def same(a: list[object], b: list[object]) -> bool:
    """Events equal, comparing Malformed by its error's reason and line (exceptions lack __eq__)."""
    def key(e: object) -> object:
        return ("malformed", e.error.reason, e.error.line) if isinstance(e, Malformed) else e
    return [key(e) for e in a] == [key(e) for e in b]


@PROPS
@given(messages)
def test_every_message_round_trips(msg) -> None:
    line = encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and len(line) <= MAX_LINE + 1
    assert parse_line(line[:-1].decode("ascii")) == msg
    assert read_all([line]) == [msg]


@PROPS
@given(st.lists(messages, max_size=20), st.lists(st.integers(0, 1 << 20), max_size=40))
def test_reader_events_do_not_depend_on_the_split(msgs, cuts) -> None:
    stream = b"".join(map(encode, msgs))
    assert read_all([stream]) == msgs
    assert read_all(split(stream, cuts)) == msgs


@settings(PROPS, max_examples=30)
@given(st.lists(messages, max_size=6))
def test_reader_byte_at_a_time(msgs) -> None:
    stream = b"".join(map(encode, msgs))
    assert read_all([stream[i:i + 1] for i in range(len(stream))]) == msgs


@PROPS
@given(st.binary(max_size=6000).map(lambda b: b.replace(b"\n", b"")), messages,
       st.lists(st.integers(0, 1 << 20), max_size=10))
def test_garbage_line_yields_one_event_and_the_next_line_still_parses(garbage, msg, cuts) -> None:
    stream = garbage + b"\n" + encode(msg)
    whole = read_all([stream])
    assert len(whole) == 2 and whole[1] == msg
    assert isinstance(whole[0], Malformed) or whole[0] == parse_line(garbage.decode().rstrip("\r"))
    assert same(read_all(split(stream, cuts)), whole)


@PROPS
@given(st.binary(max_size=3000), st.lists(st.integers(0, 1 << 20), max_size=10))
def test_random_bytes_never_break_the_reader(data, cuts) -> None:
    reader_events = read_all([*split(data, cuts), b""])
    assert same(reader_events, read_all([data, b""]))
    assert all(isinstance(e, Malformed | control.Message) for e in reader_events)


@pytest.mark.parametrize("bad", [control.Ok("x\r"), control.Err("c", "a\nb"),
                                 control.Abort(1, "two words")])
def test_encode_refuses_what_would_not_read_back(bad) -> None:
    with pytest.raises(ValueError):
        encode(bad)


def test_endpoint_parse_rejects_non_addresses() -> None:
    for text_ in ("localhost:80", "1.2.3.4", "[::1]80", "1.2.3.4:99999", "[1.2.3.4]:x"):
        with pytest.raises(ValueError):
            Endpoint.parse(text_)
    assert Endpoint.parse("[::1]:80") == Endpoint(str(ipaddress.ip_address("::1")), 80)


# tokens close to what the hot lines accept: digits (leading zeros, 20/21 digits), '-', the
# directions, a trailing CR, non-ASCII digits, empty tokens
odd_token = st.sampled_from(["-", "in", "out", "OUT", "", "0" * 21, "1" * 20, "007", "12\r",
                             "\u0663", "-1", "+1", " "])
num = st.one_of(uint.map(str), uint.map(str), odd_token)
direction = st.one_of(st.sampled_from(["in", "out"]), odd_token)
hot_line = st.one_of(
    st.builds(lambda a, b: f"BEGIN {a} {b}", num, st.one_of(st.just("-"), num)),
    st.builds(lambda *t: "IO " + " ".join(t), num, num, direction, num, num),
    st.builds(lambda a: f"COMMIT {a}", num),
    st.builds(lambda a, b: f"GRADUAL {a} {b}", num, num),
    st.builds(lambda a, b: f"RELEASE {a} {b}", num, num),
    st.builds(lambda verb, toks: " ".join([verb, *toks]),
              st.sampled_from(["BEGIN", "IO", "COMMIT", "GRADUAL", "RELEASE", "Io"]),
              st.lists(st.one_of(num, direction), max_size=7)))


@settings(PROPS, max_examples=400)
@given(hot_line)
def test_hot_lines_read_as_the_generic_parser_reads_them(line) -> None:
    """The reader's fast path for BEGIN/IO/COMMIT/GRADUAL/RELEASE gives exactly what parse_line
    gives: the same message, or Malformed with the same reason."""
    raw = line.encode("utf-8")
    try:
        expected: object = parse_line(raw.decode("ascii").rstrip("\r"))
    except (UnicodeDecodeError, control.ControlProtocolError):
        expected = None
    [event] = read_all([raw + b"\n"])
    if expected is None:
        assert isinstance(event, Malformed)
    else:
        assert event == expected
