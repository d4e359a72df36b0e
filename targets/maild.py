"""Running targets/maild.c (our own legacy-style mail-drop daemon, a second SEV data point next
to kv_server): its functions, their return types, training and evaluation sessions.

``MaildServer.start()`` compiles and starts it; ``exchange`` works as ``KvServer.exchange``. One
request is one reply: a DATA body travels as one request, its lines and the final "." joined by
newlines.
"""

from __future__ import annotations

import random

from targets.kv_server import KvServer

RETURN_TYPES: dict[str, str] = {
    "handle_line": "int", "parse_verb": "int", "next_state": "int", "valid_name": "int",
    "parse_address": "int", "find_mailbox": "ptr", "add_recipient": "int", "body_add": "int",
    "deliver": "int", "mailbox_count": "int", "send_code": "int", "cmd_helo": "int",
    "cmd_mail": "int", "cmd_rcpt": "int", "cmd_data": "int", "data_line": "int",
    "cmd_stat": "int",
}
"""Every exported function (hook, profile, inject) with its C return type class."""

FUNCTIONS = tuple(RETURN_TYPES)

USERS = ("alice", "bob", "carol", "postmaster")


class MaildServer(KvServer):
    """A started maild process."""

    NAME = "maild"


def _session(rnd: random.Random) -> list[str]:
    """One mail transaction, now and then with a malformed or out-of-sequence command."""
    out = [f"HELO {rnd.choice(['client', 'mx1.example', 'bad name!', 'relay-2'])}"]
    r = rnd.random()
    if r < 0.1:
        out.append("DATA")  # out of sequence
    out.append(rnd.choice(["MAIL FROM:<sender@example.org>", "MAIL FROM:<x@y>",
                           "MAIL FROM:<nobody>", "MAIL FROM:sender@example.org",
                           "MAIL FROM:<sender@example.org>"]))
    for _ in range(rnd.randrange(1, 6)):
        user = rnd.choice([*USERS, "mallory", "x" * 40])
        out.append(f"RCPT TO:<{user}@example.org>" if rnd.random() < 0.9 else f"RCPT {user}")
    out.append("DATA")
    body = [f"line {i} " + "z" * rnd.randrange(0, 60) for i in range(rnd.randrange(1, 6))]
    out.append("\n".join([*body, "."]))
    if rnd.random() < 0.3:
        out.append(rnd.choice(["RSET", "NOOP", "VRFY alice", "STAT bob", "STAT mallory"]))
    return out


def training_requests(n: int, seed: int) -> list[str]:
    """About ``n`` requests (after an XRESET): mail sessions with malformed input mixed in."""
    rnd = random.Random(seed)
    out = ["XRESET"]
    while len(out) < n:
        out += _session(rnd)
        out.append(f"STAT {rnd.choice(USERS)}")
    return out


EVAL_REQUESTS = (
    "XRESET", "HELO client", "MAIL FROM:<ann@example.org>", "RCPT TO:<alice@example.org>",
    "RCPT TO:<mallory@example.org>", "RCPT TO:<bob@example.org>", "DATA", "hello\nworld\n.",
    "STAT alice", "MAIL FROM:<bad>", "MAIL FROM:<ann@example.org>", "RCPT TO:<carol@x>", "DATA",
    "short\n.", "STAT carol", "RSET", "DATA", "HELO bad name!", "MAIL FROM:<ann@example.org>",
    "RCPT TO:<postmaster@x>", "DATA", "one\ntwo\nthree\n.", "STAT postmaster", "STAT bob", "NOOP",
)
"""A fixed session, different from any training run."""
