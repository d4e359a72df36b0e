"""The commit protocol's lines as the agent writes them from inside a real C server, read by a
plain Unix listener: pairing, the socket's 4-tuple, stream offsets that match the bytes the client
saw, COMMIT/ABORT, RELEASE for output outside transactions, GRADUAL before a read that follows
output, CLOSE; and fail-closed behaviour when the control socket is gone.
"""

from __future__ import annotations

from protocols import control as c

from .conftest import read_line

TOKEN = "t0ken-for-tests"


def coalesce(msgs: list) -> list:
    """Adjacent IO lines of one tx, cid and direction that continue each other, as one range (the
    agent merges them only while they wait in the same batch)."""
    out: list = []
    for m in msgs:
        last = out[-1] if out else None
        if (isinstance(m, c.Io) and isinstance(last, c.Io) and last.end == m.start
                and (last.tx, last.cid, last.direction) == (m.tx, m.cid, m.direction)):
            out[-1] = c.Io(m.tx, m.cid, m.direction, last.start, m.end)
        else:
            out.append(m)
    return out


def test_a_conversation_becomes_commit_protocol_lines(listener, server):
    server.instrument({"control": {"path": str(listener.path), "token": TOKEN}})
    hello = listener.until(lambda m: isinstance(m, c.Guard))
    assert hello == [c.Hello(1, "agent", server.proc.pid, TOKEN), c.Guard()]

    client = server.connect()
    client.sendall(b"GET alice\n")
    assert read_line(client) == b"REPLY alice\n"
    first = listener.until(lambda m: isinstance(m, c.Commit))
    conn = next(m for m in first if isinstance(m, c.Conn))
    # The server's view: its local end is the listening address, its peer is our client socket.
    assert (conn.local.host, conn.local.port) == ("127.0.0.1", server.port)
    assert (conn.peer.host, conn.peer.port) == client.getsockname()
    cid = conn.cid
    assert coalesce([m for m in first if not isinstance(m, c.Conn)]) == [
        c.Begin(1, None), c.Io(1, cid, "out", 0, 12), c.Commit(1)]

    client.sendall(b"STATE\n")
    state = read_line(client)
    assert listener.until(lambda m: isinstance(m, c.Release)) == [c.Release(cid, 12 + len(state))]
    out = 12 + len(state)

    client.sendall(b"ASK bob\n")
    question = read_line(client)  # only arrives because the agent released it (GRADUAL)
    assert question == b"QUESTION bob?\n"
    gradual = listener.until(lambda m: isinstance(m, c.Gradual))
    assert coalesce(gradual) == [c.Begin(2, None), c.Io(2, cid, "out", out, out + len(question)),
                       c.Gradual(2, cid)]
    client.sendall(b"yes\n")
    assert read_line(client) == b"ANSWERED yes\n"
    inp = len(b"GET alice\nSTATE\nASK bob\n")
    rest = listener.until(lambda m: isinstance(m, c.Commit))
    assert coalesce(rest) == [c.Io(2, cid, "in", inp, inp + 4),
                    c.Io(2, cid, "out", out + len(question), out + len(question) + 13),
                    c.Commit(2)]

    client.sendall(b"GET refuse\n")
    assert client.recv(6) == b"REPLY "
    out += len(question) + 13
    assert coalesce(listener.until(lambda m: isinstance(m, c.Abort))) == [
        c.Begin(3, None), c.Io(3, cid, "out", out, out + 6), c.Abort(3, "ivp:Negative")]

    client.close()
    assert listener.until(lambda m: isinstance(m, c.Close)) == [c.Close(cid)]
    wire = server.status()["wire"]
    assert wire["connected"] and wire["lostLines"] == 0 and wire["sendFailures"] == 0


def test_a_nested_transaction_released_by_a_gradual_is_announced_under_its_parent(listener,
                                                                                  server):
    """TALK: handle_dialog (tx 1) > handle_exchange (tx 2) writes its question, then reads. The
    GRADUAL releases the question; tx 2 then holds nothing at the gateway, so its BEGIN (still
    queued) is dropped and its lines name tx 1. Its read announces it again; it commits folded."""
    server.instrument({"control": {"path": str(listener.path), "token": TOKEN}},
                      functions=("handle_dialog", "handle_exchange"))
    listener.until(lambda m: isinstance(m, c.Guard))
    client = server.connect()
    client.sendall(b"TALK bob\n")
    question = read_line(client)
    assert question == b"QUESTION bob?\n"
    first = listener.until(lambda m: isinstance(m, c.Gradual))
    cid = next(m for m in first if isinstance(m, c.Conn)).cid
    q = len(question)
    assert coalesce([m for m in first if not isinstance(m, c.Conn)]) == [
        c.Begin(1, None), c.Io(1, cid, "out", 0, q), c.Gradual(1, cid)]
    client.sendall(b"yes\n")
    assert read_line(client) == b"ANSWERED yes\n"
    assert read_line(client) == b"TALKED 1\n"
    inp = len(b"TALK bob\n")
    assert coalesce(listener.until(lambda m: isinstance(m, c.Commit))) == [
        c.Io(1, cid, "in", inp, inp + 4), c.Io(1, cid, "out", q, q + 13 + 9), c.Commit(1)]
    wire = server.status()["wire"]
    assert wire["announced"] == 3 and wire["folded"] == 2 and wire["gradual"] == 1


def test_without_a_control_socket_the_server_keeps_serving_and_says_so(tmp_path, server):
    server.instrument({"control": {"path": str(tmp_path / "absent.sock"), "token": TOKEN}})
    client = server.connect()
    for name in (b"a", b"b"):
        client.sendall(b"GET " + name + b"\n")
        assert read_line(client) == b"REPLY " + name + b"\n"
    wire = server.status()["wire"]
    assert not wire["connected"]
    assert wire["lostLines"] > 0
    logged = [e for batch in server.events if isinstance(batch, dict)
              for e in [batch.get("fields") or {}] if e.get("event") == "control-connect-failed"]
    assert logged and logged[0]["path"].endswith("absent.sock")
