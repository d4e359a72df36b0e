"""SEV on Apache (apache2 -X) through the real agent: trained on normal and malformed requests,
one failure injected per function, replies compared with the uninjected ones."""

from __future__ import annotations

import os
from typing import Any

import pytest

from healer.profile import ProfileSession, agent_tables
from healer.profile._evaluate import AgentTarget, run_trials
from targets import apache
from targets.apache_sev import (
    EVAL_REQUESTS,
    FUNCTIONS,
    RETURN_TYPES,
    HttpdServer,
    training_requests,
)

pytestmark = [pytest.mark.root, pytest.mark.apache]


@pytest.fixture
def httpd():
    if os.geteuid() != 0:
        pytest.skip("Frida and Apache's user switch need root")
    if not os.path.exists(apache.APACHE2) or not apache.MANUAL.is_dir():
        pytest.skip("needs Debian's apache2 and apache2-doc")
    server = HttpdServer.start()
    try:
        yield server
    finally:
        server.stop()


def _start(profile: dict[str, Any]) -> AgentTarget:
    return AgentTarget(HttpdServer.start(), FUNCTIONS, profile)


def test_sev_keeps_apache_replies_where_fixed_values_change_them(httpd):
    s = ProfileSession(window=15, functions=FUNCTIONS, ret_bits=64, args=2)
    s.attach(httpd.pid)
    try:
        httpd.exchange(training_requests(1))
        trained = s.profile()
    finally:
        s.close()
    # ap_count_dirs counts a path's slashes (1 for "/manual/"); an access checker's OK is 0
    functions = ["ap_count_dirs", "ap_run_access_checker"]
    vanilla = {fn: -1 if ty == "int" else 0 for fn, ty in RETURN_TYPES.items()}
    modes = {"sev": agent_tables(trained), "fixed 0": agent_tables(trained, fixed=0),
             "vanilla": agent_tables(trained, fixed=vanilla)}
    trials = run_trials(_start, EVAL_REQUESTS, functions, modes, max_nth=1, fresh=True)
    got = {(t.function, t.mode): t for t in trials}
    assert set(got) == {(fn, m) for fn in functions for m in modes}  # every injection fired
    assert all(t.alive and t.same_after for t in trials)  # later requests: independent of it
    assert got["ap_count_dirs", "sev"].value == "1" and got["ap_count_dirs", "sev"].same
    assert not got["ap_count_dirs", "fixed 0"].same  # the healed request's reply changed
    assert got["ap_run_access_checker", "sev"].value == "0"
    assert got["ap_run_access_checker", "sev"].same
    assert got["ap_run_access_checker", "vanilla"].value == "-1"  # DECLINED: access refused
    assert not got["ap_run_access_checker", "vanilla"].same
    assert httpd.exchange(["GET /manual/ HTTP/1.0"]) is not None  # the training server lives
