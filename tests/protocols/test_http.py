"""HTTP/1.1 framers: every framing case the gateway meets, offsets checked against the stream."""

from __future__ import annotations

import h11
import pytest

from protocols import ProtocolError
from protocols.http import (
    NEED_DATA,
    BufferLimitExceeded,
    H11RequestFramer,
    HeadTooLarge,
    InterimResponse,
    MalformedMessage,
    MessageEnd,
    MessageStart,
    RequestFramer,
    RequestInfo,
    StreamEnd,
    TruncatedMessage,
    error_response,
)


def spans(events: list[object]) -> list[tuple[int, int]]:
    """(start, end) of every complete message, pairing each MessageStart with its MessageEnd."""
    starts = [e.offset for e in events if isinstance(e, MessageStart)]
    ends = [e.offset for e in events if isinstance(e, MessageEnd)]
    return list(zip(starts, ends, strict=True))


def boundaries(*messages: bytes) -> list[tuple[int, int]]:
    out, at = [], 0
    for m in messages:
        out.append((at, at + len(m)))
        at += len(m)
    return out


def requests_of(engine, drain, *messages: bytes, eof: bool = True) -> list[object]:
    return drain(engine.Request(), [*messages, *([b""] if eof else [])])


def responses_to(engine, drain, methods: list[str | RequestInfo], *messages: bytes,
                 eof: bool = True) -> list[object]:
    framer = engine.Response()
    for m in methods:
        framer.expect(m)
    return drain(framer, [*messages, *([b""] if eof else [])])


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST_CL = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
POST_CHUNKED = (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\n")


def test_pipelined_requests_end_exactly_where_the_next_begins(engine, drain) -> None:
    events = requests_of(engine, drain, GET + POST_CL + POST_CHUNKED + GET)
    assert spans(events) == boundaries(GET, POST_CL, POST_CHUNKED, GET)
    assert [e.info.method for e in events if isinstance(e, MessageStart)] == [
        "GET", "POST", "POST", "GET"]
    assert events[-1] == StreamEnd(len(GET + POST_CL + POST_CHUNKED + GET))


def test_request_head_end_and_info(engine, drain) -> None:
    start = requests_of(engine, drain, POST_CL)[0]
    assert start == MessageStart(0, len(POST_CL) - 5,
                                 RequestInfo("POST", "/p", "1.1", keep_alive=True, upgrade=False))


def test_connection_close_request_ends_keep_alive_and_later_bytes_are_an_error(engine,
                                                                               drain) -> None:
    closing = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    framer = engine.Request()
    events = drain(framer, [closing])
    assert events[-1] == MessageEnd(len(closing), events[0].info)
    assert events[0].info.keep_alive is False
    with pytest.raises(MalformedMessage) as err:
        drain(framer, [GET])
    assert err.value.side == "client"
    assert err.value.offset == len(closing)


def test_http10_keep_alive_client_goes_on_and_plain_http10_closes(engine, drain) -> None:
    ka = b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    plain = b"GET /2 HTTP/1.0\r\n\r\n"
    events = requests_of(engine, drain, ka + ka + plain)
    assert spans(events) == boundaries(ka, ka, plain)
    assert [e.info.keep_alive for e in events if isinstance(e, MessageStart)] == [True, True, False]


def test_responses_follow_request_methods_head_204_304_have_no_body(engine, drain) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    head_ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
    not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"
    stream = ok + head_ok + no_content + not_modified + ok
    events = responses_to(engine, drain, ["GET", "HEAD", "GET", "GET", "GET"], stream)
    assert spans(events) == boundaries(ok, head_ok, no_content, not_modified, ok)
    assert [e.info.method for e in events if isinstance(e, MessageEnd)] == [
        "GET", "HEAD", "GET", "GET", "GET"]


def test_chunked_response_with_trailers(engine, drain) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"a\r\n0123456789\r\n0\r\nX-Digest: abc\r\n\r\n")
    events = responses_to(engine, drain, ["GET", "GET"], chunked + chunked)
    assert spans(events) == boundaries(chunked, chunked)


def test_interim_responses_precede_the_final_one(engine, drain) -> None:
    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
    final = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    events = responses_to(engine, drain, ["POST"], cont + early + final)
    assert events[:2] == [InterimResponse(0, len(cont), 100),
                          InterimResponse(len(cont), len(cont + early), 103)]
    assert spans(events) == [(len(cont + early), len(cont + early + final))]


def test_close_delimited_response_ends_at_eof(engine, drain) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    framer = engine.Response()
    framer.expect("GET")
    events = drain(framer, [head, b"body until ", b"the server closes"])
    assert len(events) == 1 and events[0].info.close_delimited and not events[0].info.keep_alive
    assert drain(framer, [b""]) == [MessageEnd(len(head) + 28, events[0].info),
                                     StreamEnd(len(head) + 28)]


def test_response_waits_for_its_request(engine, drain) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    framer = engine.Response()
    assert drain(framer, [ok]) == []
    framer.expect("GET")
    assert spans(drain(framer, [b""])) == [(0, len(ok))]


def test_response_with_no_request_is_an_error_at_eof(engine, drain) -> None:
    with pytest.raises(MalformedMessage) as err:
        responses_to(engine, drain, [], b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert err.value.side == "server"


def test_accepted_upgrade_turns_both_directions_into_tunnels(engine, drain) -> None:
    upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    requests = engine.Request()
    events = drain(requests, [upgrade + b"\x81\x05hello"])
    info = events[0].info
    assert info.upgrade and spans(events) == [(0, len(upgrade))]
    switching = (b"HTTP/1.1 101 Switching Protocols\r\n"
                 b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    responses = engine.Response()
    responses.expect(info)
    resp_events = drain(responses, [switching + b"\x81\x02hi", b"more", b""])
    assert resp_events[0].info.switched and resp_events[0].info.status == 101
    assert spans(resp_events) == [(0, len(switching))]
    assert resp_events[-1] == StreamEnd(len(switching) + 8)
    requests.protocol_switched(True)
    assert drain(requests, [GET, b""]) == [StreamEnd(len(upgrade) + 7 + len(GET))]


def test_declined_upgrade_keeps_framing_requests(engine, drain) -> None:
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    requests = engine.Request()
    assert spans(drain(requests, [upgrade + GET])) == [(0, len(upgrade))]
    with pytest.raises(RuntimeError):
        engine.Request().protocol_switched(True)
    requests.protocol_switched(False)
    assert spans(drain(requests, [b""])) == [(len(upgrade), len(upgrade + GET))]


def test_connect_2xx_is_a_tunnel(engine, drain) -> None:
    connect = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"
    assert requests_of(engine, drain, connect, eof=False)[0].info.upgrade
    established = b"HTTP/1.1 200 Connection Established\r\n\r\n"
    events = responses_to(engine, drain, ["CONNECT"], established + b"\x00\x01binary")
    assert events[0].info.switched and spans(events) == [(0, len(established))]


@pytest.mark.parametrize(("stream", "error"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", MalformedMessage),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", MalformedMessage),  # TLS hello
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", MalformedMessage),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     MalformedMessage),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", MalformedMessage),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", MalformedMessage),
    (POST_CL[:-2], TruncatedMessage),
    (POST_CHUNKED[:-4], TruncatedMessage),
    (GET[:-2], TruncatedMessage),
])
def test_malformed_requests_raise_a_named_error_each_time(engine, drain, stream, error) -> None:
    framer = engine.Request()
    with pytest.raises(error) as first:
        drain(framer, [stream, b""])
    assert isinstance(first.value, ProtocolError) and first.value.side == "client"
    with pytest.raises(error):
        framer.next_event()


@pytest.mark.parametrize(("stream", "strict", "lenient"), [
    (b"GET / HTTP/1.1\r\n\r\n", H11RequestFramer, RequestFramer),  # HTTP/1.1 without Host
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     H11RequestFramer, RequestFramer),
    # both framings announced (request smuggling): llhttp refuses, h11 lets chunked win
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
     b"0\r\n\r\n", RequestFramer, H11RequestFramer),
    # bare LF line ends (RFC 9112 lets a recipient accept them): h11 does, httptools' llhttp is
    # built in strict mode and refuses them
    (b"GET / HTTP/1.1\nHost: x\n\n", RequestFramer, H11RequestFramer),
], ids=["no-host", "gzip-chunked", "te-and-cl", "bare-lf"])
def test_where_the_engines_differ_one_refuses_and_one_frames(drain, stream, strict,
                                                              lenient) -> None:
    assert spans(drain(lenient(), [stream, b""])) == [(0, len(stream))]
    with pytest.raises(MalformedMessage):
        drain(strict(), [stream, b""])


def test_head_over_the_limit_is_refused_however_it_arrives(engine, drain) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 300 + b"\r\n\r\n"
    for chunks in ([head], [bytes([b]) for b in head]):
        with pytest.raises(HeadTooLarge) as err:
            drain(engine.Request(max_head=256), chunks)
        assert err.value.offset == 0


def test_buffer_limit_refuses_more_unframed_bytes(engine) -> None:
    framer = engine.Response(max_buffer=100)  # no request expected: bytes wait in the buffer
    framer.receive_data(b"x" * 60)
    framer.receive_data(b"x" * 60)  # never raises: the error comes from next_event
    assert framer.buffered == 60
    with pytest.raises(BufferLimitExceeded) as err:
        framer.next_event()
    assert (err.value.side, err.value.offset) == ("server", 60)  # where refused bytes begin


def _parse_as_client(method: str, data: bytes) -> list[object]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    events = []
    for _ in range(10):
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            break
        events.append(event)
    return events


def test_error_response_is_a_complete_response_h11_accepts() -> None:
    raw = error_response(502, close=True)
    response, data, end = _parse_as_client("GET", raw)
    assert response.status_code == 502 and response.reason == b"Bad Gateway"
    assert (b"connection", b"close") in list(response.headers)
    assert (b"content-type", b"text/plain; charset=utf-8") in list(response.headers)
    assert data.data == b"502 Bad Gateway\n" and isinstance(end, h11.EndOfMessage)


def test_error_response_for_head_and_keep_alive(engine, drain) -> None:
    raw = error_response(503, "Busy", close=False, head=True)
    assert raw.endswith(b"\r\n\r\n") and b"Content-Length: 9\r\n" in raw
    assert b"Connection" not in raw
    events = responses_to(engine, drain, ["HEAD", "GET"], raw + error_response(close=False))
    assert [e.info.status for e in events if isinstance(e, MessageEnd)] == [503, 503]
    assert all(e.info.keep_alive for e in events if isinstance(e, MessageEnd))


@pytest.mark.parametrize(("status", "reason"), [(204, None), (304, None), (101, None),
                                                (700, None), (500, "Bad\r\nSet-Cookie: x")])
def test_error_response_refuses_what_would_break_the_stream(status, reason) -> None:
    with pytest.raises(ValueError):
        error_response(status, reason)


def test_need_data_until_a_message_is_complete(engine) -> None:
    framer = engine.Request()
    framer.receive_data(POST_CL[:-1])
    assert isinstance(framer.next_event(), MessageStart)
    assert framer.next_event() is NEED_DATA
    framer.receive_data(POST_CL[-1:])
    assert framer.next_event() == MessageEnd(len(POST_CL), RequestInfo("POST", "/p", "1.1",
                                                                       keep_alive=True,
                                                                       upgrade=False))


def test_message_ending_at_a_chunk_end_is_reported_before_more_data(engine, drain) -> None:
    # regressions: h11 engine: carrying b"" over to a fresh connection read as the peer closing;
    # llhttp engine: a body-less message ending a chunk waited for the next chunk to end
    ka = b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    framer = engine.Request()
    assert spans(drain(framer, [ka])) == [(0, len(ka))]
    assert spans(drain(framer, [ka, b""])) == [(len(ka), 2 * len(ka))]

