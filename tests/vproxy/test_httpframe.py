"""The gateway's HTTP boundary tracking agrees with protocols' llhttp framers on every stream.

``vproxy/_httpframe.py`` scans simple keep-alive messages itself and hands anything else to the
framers; these tests generate exchanges mixing both kinds (bodies, chunked, HEAD, 204, interim
responses, declined and accepted upgrades) and check, after every released chunk, that it says
"at a boundary" exactly where the framers put a response end, and names the request to answer.
"""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import http
from protocols._framing import NEED_DATA, MessageEnd, MessageStart
from vproxy import _httpframe
from vproxy._httpframe import HttpBoundaries, simple_request, simple_response_length

OK = b"HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\nhello"
EXCHANGES = [
    (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", OK),
    (b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n", OK[:-5]),
    (b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
     b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
     b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
    (b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    (b"GET /d HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"),
    (b"GET /e HTTP/1.1\r\nHost: h\r\n\r\n",
     b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + OK),
    (b"GET /f HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", OK),
    (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"),  # declined: framing goes on
]
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
           b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")


def _reference(client: bytes, server: bytes) -> tuple[dict[int, str | None], bool]:
    """Response ends -> method of the next unanswered request, per the llhttp framers alone;
    and whether the stream became a tunnel."""
    requests, responses = http.RequestFramer(), http.ResponseFramer()
    methods: list[str] = []
    requests.receive_data(client)
    responses.receive_data(server)
    ends: dict[int, int] = {}  # response end -> responses answered by then
    answered = 0
    tunnel = False
    for _ in range(100):
        progress = False
        while (ev := requests.next_event()) is not NEED_DATA:
            progress = True
            if isinstance(ev, MessageStart):
                methods.append(ev.info.method)
                responses.expect(ev.info)
        while (ev := responses.next_event()) is not NEED_DATA:
            progress = True
            if isinstance(ev, MessageEnd):
                answered += 1
                ends[ev.offset] = answered
                if ev.info.switched:
                    tunnel = True
                    requests.protocol_switched(True)
        if not progress:
            break
        with contextlib.suppress(RuntimeError):  # a declined upgrade waits for this verdict
            requests.protocol_switched(False)
    return {end: methods[n] if n < len(methods) else None for end, n in ends.items()}, tunnel


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(range(len(EXCHANGES))), min_size=1, max_size=8),
       st.booleans(), st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_boundaries_match_the_framers(picks, upgrade_last, cuts):
    exchanges = [EXCHANGES[i] for i in picks] + ([UPGRADE] if upgrade_last else [])
    client = b"".join(q for q, _ in exchanges) + (b"\x81\x05tunnel" if upgrade_last else b"")
    server = b"".join(r for _, r in exchanges) + (b"\x81\x02ok" if upgrade_last else b"")
    ends, _ = _reference(client, server)
    tracker = HttpBoundaries()
    tracker.request_bytes(client)
    pos, k = 0, 0
    while pos < len(server):
        step = cuts[k % len(cuts)]
        k += 1
        tracker.response_bytes(server[pos:pos + step])
        pos = min(len(server), pos + step)
        assert not tracker.broken
        assert tracker.at_boundary() == (pos in ends), (pos, sorted(ends))
        if pos in ends:
            want = ends[pos]
            got = tracker.unanswered[0].method if tracker.unanswered else None
            assert got == want
    assert tracker.buffered < 64  # nothing piles up, tunnel bytes included


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(range(len(EXCHANGES) - 1)), min_size=1, max_size=8),
       st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_request_boundaries_match_the_framer(picks, cuts):
    """A back route frames its released output as requests: "at a boundary" exactly where the
    llhttp request framer ends a request (no upgrade: its verdict comes from the responses)."""
    stream = b"".join(EXCHANGES[i][0] for i in picks)
    framer = http.RequestFramer()
    framer.receive_data(stream)
    ends = set()
    while (ev := framer.next_event()) is not NEED_DATA:
        if isinstance(ev, MessageEnd):
            ends.add(ev.offset)
    assert len(ends) == len(picks)
    tracker = HttpBoundaries()
    pos, k = 0, 0
    while pos < len(stream):
        step = cuts[k % len(cuts)]
        k += 1
        tracker.request_bytes(stream[pos:pos + step])
        pos = min(len(stream), pos + step)
        assert not tracker.broken
        assert tracker.requests_at_boundary() == (pos in ends), (pos, sorted(ends))
    assert len(tracker.unanswered) == len(picks)


def test_accepted_upgrade_turns_both_directions_into_a_tunnel():
    tracker = HttpBoundaries()
    tracker.request_bytes(UPGRADE[0])
    tracker.response_bytes(UPGRADE[1])
    assert tracker.at_boundary()
    for _ in range(40):  # 2 MiB of tunnel traffic: never framed, never kept
        tracker.request_bytes(b"\x00" * 65536)
    assert not tracker.broken and tracker.buffered == 0
    tracker.response_bytes(b"\x81\x02ok")
    assert not tracker.at_boundary()  # inside the tunnel there is no boundary any more


def test_scanner_accepts_only_plain_messages():
    assert simple_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == "GET"
    for head in (b"GET / HTTP/1.0\r\n\r\n", b"POST / HTTP/1.1\r\nHost: h\r\n\r\n",
                 b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                 b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
                 b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", b"GET / HTTP/1.1\nHost: h\r\n\r\n",
                 b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", b"GET / HTTP/1.1\r\nHost h\r\n\r\n",
                 b"GET / HTTP/1.1\r\nProxy-Connection: keep-alive\r\n\r\n",
                 b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n",
                 b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"):
        assert simple_request(head) is None, head
    # only the headers that frame a message matter: other values may say anything
    assert simple_request(b"GET /upgrade HTTP/1.1\r\nReferer: /content-length\r\n"
                          b"Connection: Keep-Alive\r\n\r\n") == "GET"
    assert simple_response_length(OK[:-5], "GET") == 5
    assert simple_response_length(OK[:-5], "HEAD") == 0
    for head in (b"HTTP/1.1 200 OK\r\n\r\n",
                 b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                 b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n"):
        assert simple_response_length(head, "GET") is None, head


def test_line_verdicts_stay_bounded():
    """Verdicts are kept per distinct header line (a keep-alive connection repeats most of them);
    a stream of ever-new lines (dates, ETags) never keeps more than the bound."""
    for i in range(3 * _httpframe._MAX_VERDICTS):
        head = b"HTTP/1.1 200 OK\r\nETag: \"%d\"\r\nContent-Length: %d\r\n\r\n" % (i, i)
        assert simple_response_length(head, "GET") == i
        assert len(_httpframe._VERDICTS) <= _httpframe._MAX_VERDICTS
