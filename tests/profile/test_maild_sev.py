"""SEV on targets/maild.c (our own legacy-style daemon: error paths return distinct codes and
callers check them) through the real agent: SEV's learned state keeps the session's replies where
the fixed values of vanilla error virtualization change them."""

from __future__ import annotations

from typing import Any

from healer.profile import Profile, ProfileSession, agent_tables
from healer.profile._agent import AgentSession
from healer.profile._evaluate import AgentTarget, run_trials
from targets.maild import EVAL_REQUESTS, FUNCTIONS, RETURN_TYPES, MaildServer, training_requests


def _start(profile: dict[str, Any]) -> AgentTarget:
    return AgentTarget(MaildServer.start(), FUNCTIONS, profile)


def _train() -> Profile:
    server = MaildServer.start()
    s = ProfileSession(window=15, functions=FUNCTIONS, ret_bits=64)
    try:
        s.attach(server.pid)
        server.exchange(training_requests(400, 1))
        return s.profile()
    finally:
        s.close()
        server.stop()


def test_sev_state_keeps_the_session_where_fixed_values_break_it():
    trained = _train()
    vanilla = {fn: -1 if ty == "int" else 0 for fn, ty in RETURN_TYPES.items()}
    modes = {"sev": agent_tables(trained), "fixed 0": agent_tables(trained, fixed=0),
             "vanilla": agent_tables(trained, fixed=vanilla)}
    trials = run_trials(_start, EVAL_REQUESTS, ["next_state", "find_mailbox"], modes, max_nth=3)
    got = {(t.function, t.nth, t.mode): t for t in trials}
    assert len(got) == 2 * 3 * 3 and all(t.alive for t in trials)
    for nth in (1, 2, 3):
        # next_state in cmd_helo, cmd_mail, cmd_rcpt: the state training saw there
        sev = got["next_state", nth, "sev"]
        assert sev.why.startswith("context: ") and sev.same  # every reply as without injection
        assert not got["next_state", nth, "fixed 0"].same  # back to START: 503 bad sequence
        # a mailbox pointer from training is no address here: SEV answers NULL, as vanilla EV
        assert got["find_mailbox", nth, "sev"].value == "0"
        assert got["find_mailbox", nth, "vanilla"].value == "0"
    assert sum(not got["next_state", n, "vanilla"].same for n in (1, 2, 3)) >= 2  # -1: refused


def test_post_evaluation_judges_live_addresses_like_the_tables(sessions):
    # find_mailbox returns a pointer into this process: not "never seen in training" because
    # training's pointers were other addresses (both count as 0, as in the tables)
    trained = _train()
    server = MaildServer.start()
    try:
        s = AgentSession(server.pid, FUNCTIONS, agent_tables(trained))
        sessions.append(s)
        replies = server.exchange(list(EVAL_REQUESTS[:4]),
                                  pause=(2, lambda: s.inject("next_state")))
        assert replies is not None and replies[3] == "250 recipient ok"  # the session went on
        for _ in range(3):  # a post-evaluation ends after 8 calls: more requests finish it
            server.exchange(["NOOP"])
        s.status()
        posts = s.of_type("profile:post")
        assert posts and posts[0]["function"] == "next_state"
        assert not any("find_mailbox returned" in o for p in posts for o in p["offProfile"])
        assert s.status()["profile"]["taintedReturns"] > 0  # returns after the heal were judged
    finally:
        server.stop()
