"""Property tests of the framers: generated valid streams are framed exactly where their messages
were put, however the stream is split; garbage and mutated streams raise a ProtocolError or wait for
data, within a bounded number of steps and without buffering past the limits."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import ProtocolError
from protocols.http import (
    H11RequestFramer,
    H11ResponseFramer,
    InterimResponse,
    RequestFramer,
    RequestInfo,
    ResponseFramer,
)
from protocols.lenpfx import LengthPrefixFramer, MessageEnd, MessageStart, StreamEnd, error_frame
from protocols.line import LineFramer

# No deadline: the machine is shared, so time is not asserted; every loop is bounded instead
# (conftest's drain) and pytest-timeout bounds the whole test.
PROPS = settings(max_examples=80, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


cuts_st = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=30)
token_st = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
value_st = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=/.,", max_size=20).map(str.strip)
headers_st = st.lists(st.tuples(token_st.map(lambda t: "x-" + t), value_st), max_size=4)


@dataclass
class Built:
    stream: bytes
    spans: list[tuple[int, int]]  # every final message, in order
    interims: list[tuple[int, int]]
    methods: list[str]


def _head(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{line}\r\n" for line in [first_line, *(f"{k}: {v}" for k, v in headers)]
                   ).encode() + b"\r\n"


def _body(framing: str, body: bytes, chunk_cut: int, trailers: list[tuple[str, str]],
          headers: list[tuple[str, str]]) -> bytes:
    """Append the framing headers to ``headers`` and return the encoded body."""
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
        return body
    if framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        parts = [p for p in (body[:chunk_cut], body[chunk_cut:]) if p]
        return (b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n"
                + _head("", trailers)[2:])
    return body if framing == "close" else b""


@st.composite
def request_streams(draw: st.DrawFn) -> Built:
    built = Built(b"", [], [], [])
    for _ in range(draw(st.integers(1, 5))):
        method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]))
        target = "/" + draw(token_st) + draw(st.sampled_from(["", "?q=1", "/x.html"]))
        version, headers = draw(st.sampled_from([("1.1", [("Host", "h")]),
                                                 ("1.0", [("Connection", "keep-alive")])]))
        headers = headers + draw(headers_st)
        framing = draw(st.sampled_from(["none", "length", "chunked"] if version == "1.1"
                                       else ["none", "length"]))
        body = _body(framing, draw(st.binary(max_size=40)), draw(st.integers(0, 40)),
                     draw(headers_st), headers)
        message = _head(f"{method} {target} HTTP/{version}", headers) + body
        start = len(built.stream)
        built.stream += message
        built.spans.append((start, len(built.stream)))
        built.methods.append(method)
    return built


@st.composite
def response_streams(draw: st.DrawFn, allow_close: bool = True) -> Built:
    built = Built(b"", [], [], [])
    count = draw(st.integers(1, 5))
    for i in range(count):
        method = draw(st.sampled_from(["GET", "HEAD", "POST"]))
        for status in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
            interim = _head(f"HTTP/1.1 {status} Info", draw(headers_st))
            built.interims.append((len(built.stream), len(built.stream) + len(interim)))
            built.stream += interim
        status = draw(st.sampled_from([200, 201, 204, 301, 304, 404, 500]))
        headers = draw(headers_st)
        no_body = method == "HEAD" or status in (204, 304)
        framings = ["length", "chunked"] + (["close"] if allow_close and i == count - 1 else [])
        framing = draw(st.sampled_from(framings))
        body = draw(st.binary(max_size=40))
        encoded = _body(framing, body, draw(st.integers(0, 40)), draw(headers_st), headers)
        message = _head(f"HTTP/1.1 {status} Reason Here", headers) + (b"" if no_body else encoded)
        start = len(built.stream)
        built.stream += message
        built.spans.append((start, len(built.stream)))
        built.methods.append(method)
    return built


def _spans(events: list[object]) -> list[tuple[int, int]]:
    starts = [e.offset for e in events if isinstance(e, MessageStart)]
    ends = [e.offset for e in events if isinstance(e, MessageEnd)]
    return list(zip(starts, ends, strict=True))


def _responses(engine, methods: list[str | RequestInfo], **limits: int):
    framer = engine.Response(**limits)
    for method in methods:
        framer.expect(method)
    return framer


@PROPS
@given(request_streams(), cuts_st)
def test_requests_are_framed_where_they_were_put_for_any_split(engine, drain, built,
                                                               cuts) -> None:
    whole = drain(engine.Request(), [built.stream, b""])
    assert _spans(whole) == built.spans
    assert [e.info.method for e in whole if isinstance(e, MessageStart)] == built.methods
    assert whole[-1] == StreamEnd(len(built.stream))
    assert drain(engine.Request(), [*split(built.stream, cuts), b""]) == whole


@PROPS
@given(response_streams(), cuts_st)
def test_responses_are_framed_where_they_were_put_for_any_split(engine, drain, built,
                                                                cuts) -> None:
    whole = drain(_responses(engine, built.methods), [built.stream, b""])
    assert _spans(whole) == built.spans
    assert [(e.offset, e.end) for e in whole if isinstance(e, InterimResponse)] == built.interims
    assert drain(_responses(engine, built.methods), [*split(built.stream, cuts), b""]) == whole


@settings(PROPS, max_examples=20)
@given(request_streams(), response_streams())
def test_byte_at_a_time_equals_one_shot(engine, drain, requests, responses) -> None:
    for make, stream in ((engine.Request, requests.stream),
                         (lambda: _responses(engine, responses.methods), responses.stream)):
        whole = drain(make(), [stream, b""])
        assert drain(make(), [*(stream[i:i + 1] for i in range(len(stream))), b""]) == whole


def _bounded_garbage_run(drain, framer, chunks: list[bytes], limit: int) -> None:
    """Feed ``chunks`` then EOF: each step must end in events, NEED_DATA or a ProtocolError, and
    the framer may never hold more than ``limit`` bytes."""
    try:
        for chunk in [*chunks, b""]:
            drain(framer, [chunk])
            assert framer.buffered <= limit
    except ProtocolError as exc:
        assert exc.side in ("client", "server") and exc.offset >= 0


def _mutate(data: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    for at, junk in edits:
        at %= len(data) + 1
        data = data[:at] + junk + data[at + 1:]
    return data


edits_st = st.lists(st.tuples(st.integers(0, 1 << 16), st.binary(max_size=4)), min_size=1,
                    max_size=3)


@PROPS
@given(st.one_of(st.binary(max_size=2000),
                 st.builds(_mutate, request_streams().map(lambda b: b.stream), edits_st)),
       cuts_st)
def test_garbage_requests_raise_or_wait_never_hang_or_hoard(engine, drain, data, cuts) -> None:
    framer = engine.Request(max_head=256, max_buffer=1024)
    _bounded_garbage_run(drain, framer, split(data, cuts), 1024)


@PROPS
@given(st.one_of(st.binary(max_size=2000),
                 st.builds(lambda b, e: (b.methods, _mutate(b.stream, e)), response_streams(),
                           edits_st)),
       cuts_st)
def test_garbage_responses_raise_or_wait_never_hang_or_hoard(engine, drain, data, cuts) -> None:
    methods, data = data if isinstance(data, tuple) else (["GET"] * 3, data)
    framer = _responses(engine, methods, max_head=256, max_buffer=1024)
    _bounded_garbage_run(drain, framer, split(data, cuts), 1024)


lines_st = st.lists(st.tuples(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
                              st.sampled_from([b"\n", b"\r\n"])), max_size=8)


@PROPS
@given(lines_st, cuts_st)
def test_lines_for_any_split(drain, lines, cuts) -> None:
    stream = b"".join(text + end for text, end in lines)
    whole = drain(LineFramer(max_length=30), [stream, b""])
    expected, at = [], 0
    for text, end in lines:
        expected.append((at, at + len(text) + len(end)))
        at += len(text) + len(end)
    assert _spans(whole) == expected
    assert [e.info.payload for e in whole if isinstance(e, MessageEnd)] == [
        t[:-1] if e == b"\n" and t.endswith(b"\r") else t for t, e in lines]
    assert drain(LineFramer(max_length=30), [*split(stream, cuts), b""]) == whole


@PROPS
@given(st.binary(max_size=600), cuts_st)
def test_garbage_lines_raise_or_wait_within_the_limit(drain, data, cuts) -> None:
    _bounded_garbage_run(drain, LineFramer(max_length=40), split(data, cuts), 40 + 1)


@PROPS
@given(st.sampled_from([1, 2, 4, 8]), st.sampled_from(["big", "little"]),
       st.lists(st.binary(max_size=60), max_size=6), cuts_st)
def test_frames_for_any_split(drain, width, order, payloads, cuts) -> None:
    stream = b"".join(error_frame(p, width=width, byteorder=order) for p in payloads)
    make = lambda: LengthPrefixFramer(width=width, byteorder=order)  # noqa: E731
    whole = drain(make(), [stream, b""])
    ends, at = [], 0
    for p in payloads:
        at += width + len(p)
        ends.append(at)
    assert [e.offset for e in whole if isinstance(e, MessageEnd)] == ends
    assert drain(make(), [*split(stream, cuts), b""]) == whole


@PROPS
@given(st.sampled_from([1, 2, 4, 8]), st.binary(max_size=600), cuts_st)
def test_garbage_frames_raise_or_wait_and_hold_no_payload(drain, width, data, cuts) -> None:
    framer = LengthPrefixFramer(width=width, max_frame=100)
    # after a drain nothing waits in the queue: prefixes are read, payload only counted
    _bounded_garbage_run(drain, framer, split(data, cuts), 0)


@settings(PROPS, max_examples=60)
@given(request_streams(), response_streams())
def test_both_engines_agree_on_every_boundary(drain, requests, responses) -> None:
    """llhttp (the default) and h11 (pure Python, stricter) frame valid streams identically."""
    assert (drain(RequestFramer(), [requests.stream, b""])
            == drain(H11RequestFramer(), [requests.stream, b""]))
    llhttp, h11 = ResponseFramer(), H11ResponseFramer()
    for method in responses.methods:
        llhttp.expect(method)
        h11.expect(method)
    assert drain(llhttp, [responses.stream, b""]) == drain(h11, [responses.stream, b""])


@settings(PROPS, max_examples=40)
@given(request_streams(), response_streams(allow_close=False), st.binary(max_size=200), cuts_st)
def test_upgrade_then_tunnel_for_any_split(engine, drain, requests, responses, tunnel,
                                           cuts) -> None:
    """After an accepted Upgrade both directions yield nothing until EOF, whatever the bytes."""
    upgrade = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    switching = (b"HTTP/1.1 101 Switching Protocols\r\n"
                 b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    websocket = RequestInfo("GET", "/ws", "1.1", keep_alive=True, upgrade=True)
    for stream, head, make in (
            (requests.stream + upgrade, len(requests.stream), engine.Request),
            (responses.stream + switching, len(responses.stream),
             lambda: _responses(engine, [*responses.methods, websocket]))):
        framer = make()
        events = drain(framer, split(stream + tunnel, cuts))
        assert _spans(events)[-1] == (head, len(stream))
        assert events[-1] == MessageEnd(len(stream), events[-1].info)
        if isinstance(framer, engine.Request):
            framer.protocol_switched(True)
        assert drain(framer, [b""]) == [StreamEnd(len(stream) + len(tunnel))]
