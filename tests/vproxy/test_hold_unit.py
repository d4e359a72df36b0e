"""OutHold on its own (sans-IO): any order of bytes, ranges and verdicts gives the same stream."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vproxy._hold import DISCARDED, HELD, RELEASED, InKeep, Mark, OutHold, OutRange


@st.composite
def scenarios(draw):
    """Segments (bytes, committed?) and a shuffled order of events that respects causality:
    a verdict comes after its range is known."""
    n = draw(st.integers(1, 6))
    segs = [(draw(st.binary(min_size=1, max_size=20)), draw(st.booleans())) for _ in range(n)]
    events = [("bytes", i) for i in range(n)] + [("range", i) for i in range(n)]
    order = list(draw(st.permutations(events)))
    # bytes keep their random slots but arrive in stream order; each verdict comes somewhere
    # after its range
    byte_slots = iter(range(n))
    order = [(k, next(byte_slots)) if k == "bytes" else (k, i) for k, i in order]
    for i in range(n):
        after = order.index(("range", i))
        order.insert(draw(st.integers(after + 1, len(order))), ("verdict", i))
    return segs, order


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_output_is_the_committed_stream_whatever_the_order(scenario):
    segs, order = scenario
    offsets = [0]
    for data, _ in segs:
        offsets.append(offsets[-1] + len(data))
    expected = b"".join(data for data, ok in segs if ok)
    hold = OutHold(0)
    ranges = [OutRange(offsets[i], offsets[i + 1]) for i in range(len(segs))]
    sent = b""
    times: list[float] = []
    for kind, i in order:
        if kind == "bytes":
            hold.feed(segs[i][0], 0.0)
        elif kind == "range":
            hold.add_range(ranges[i])
        else:
            assert ranges[i].state == HELD
            ranges[i].state = RELEASED if segs[i][1] else DISCARDED
        items, _, _ = hold.pump(1.0, times)
        sent += b"".join(x for x in items if isinstance(x, bytes))
        assert expected.startswith(sent)
    assert sent == expected
    assert not hold.size


def test_uncovered_bytes_wait_for_the_watermark_and_marks_come_in_order():
    hold = OutHold(0)
    hold.feed(b"abcdef", 0.0)
    assert hold.pump(0.0, []) == ([], 0, 0)  # fail closed
    hold.add_mark(Mark(4, "replace", "SIGSEGV"))
    hold.release_wm = 6
    items, released, _ = hold.pump(0.0, [])
    assert items == [b"abcd", Mark(4, "replace", "SIGSEGV"), b"ef"] and released == 6


def test_inkeep_keeps_what_replay_needs_and_forgets_committed_input():
    keep = InKeep(0, cap=8)
    keep.feed(b"GET a\n")
    assert keep.get(0, 6) == b"GET a\n"
    keep.trim(6)
    assert keep.get(0, 6) is None
    keep.feed(b"GET bb\n")  # 7 bytes, cap 8: nothing lost
    assert keep.get(6, 13) == b"GET bb\n"
    keep.feed(b"xyz")  # over the cap: the oldest go
    assert keep.get(6, 13) is None and keep.get(10, 16) == b"bb\nxyz"


def test_end_of_output_cuts_what_can_never_arrive():
    hold = OutHold(0)
    done, doomed = OutRange(0, 8, RELEASED), OutRange(8, 12, DISCARDED)
    late = OutRange(2, 6)
    for rng in (done, doomed, late):
        assert hold.add_range(rng) is None
    hold.add_mark(Mark(8, "replace", "SIGSEGV"))
    hold.feed(b"OK 1\n", 0.0)
    missing = hold.end_output()
    assert [(r.start, r.end, r.state) for r in missing] == \
        [(5, 8, RELEASED), (5, 6, HELD), (8, 12, DISCARDED)]
    assert [(r.start, r.end) for r in hold.ranges] == [(0, 5), (2, 5)]
    assert hold.marks == [Mark(5, "replace", "SIGSEGV")]  # acts where the stream ended
    assert hold.add_range(OutRange(4, 9)) == (5, 9)  # announced after the end: cut at once
    hold.add_mark(Mark(9, "close", "inject"))
    assert hold.marks[-1].offset == 5
    late.state = RELEASED
    items, released, _ = hold.pump(1.0, [])
    assert items == [b"OK 1\n", Mark(5, "replace", "SIGSEGV"), Mark(5, "close", "inject")]
    assert released == 5 and not hold.pending()


def test_a_release_of_whole_chunks_sends_them_as_received():
    """A chunk released whole goes out as the very object fed (no copy); releases that cut
    chunks still give exactly the bytes, across chunk boundaries."""
    hold = OutHold(0)
    hold.feed(memoryview(b"response one"), 0.0)  # (fed from the relay's buffer: kept as bytes)
    hold.feed(b"response two", 0.0)
    hold.release_wm = 12
    assert hold.pump(0.0, []) == ([b"response one"], 12, 0)
    hold.feed(b"three", 0.0)
    hold.release_wm = 20  # into the second chunk, then across into the third
    assert hold.pump(0.0, []) == ([b"response"], 8, 0)
    hold.release_wm = 27
    assert hold.pump(0.0, []) == ([b" twothr"], 7, 0)
    hold.release_wm = 29
    assert hold.pump(0.0, []) == ([b"ee"], 2, 0) and hold.size == 0
    whole = b"x" * 100
    hold.feed(whole, 0.0)
    hold.release_wm = 129
    assert hold.pump(0.0, [])[0][0] is whole
