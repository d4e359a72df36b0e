"""SEV on targets/maild.c (our own legacy-style daemon: error paths return distinct codes and
callers check them) through the real agent: SEV's learned state keeps the session's replies where
the fixed values of vanilla error virtualization change them."""

from __future__ import annotations

from typing import Any

from healer.profile import Profile, ProfileSession, agent_tables
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
