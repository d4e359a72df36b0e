"""Figure 2's exploit against a server built without stack protector, under the full agent with the
memory log loaded: the overflow smashes check_credentials' return address (and, from 64 bytes on,
login()'s frame). The `ret` to the garbage address must fault where the exception handler heals it
(not inside Stalker, which killed the process), and the rollback must restore login()'s frame
even where strcpy's vector stores straddle the dying frame and the caller's. Every overflow is
DENIED (Figure 3's policy), the server stays up and alice still logs in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from targets import build
from tests.healer.conftest import Healer, Server

FIGURE3 = Path(__file__).resolve().parents[2] / "policies" / "figure3.pol"
ROUNDS = 20


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_smashed_return_address_is_healed_with_memlog(tmp_path, opt):
    server = Server(build("login_server", opt=opt, stack_protector=False))
    healer = Healer(tmp_path, "attach", str(server.pid), "--coverage", "all",
                    "--policy", str(FIGURE3))
    client = None
    try:
        healer.ready()
        client = server.connect()
        for size in (64, 300):
            for _ in range(ROUNDS):
                assert client.ask("LOGIN " + "x" * size + " pw") == "DENIED", size
            assert client.ask("LOGIN alice wonderland") == "OK welcome alice"
        assert server.alive()
        heals = healer.wait_count("heal", 2 * ROUNDS)
        assert all(h["function"] == "check_credentials" and h["value"] == "0" for h in heals)
        assert all(h["shadowStack"] == "return address overwritten" for h in heals)
        assert all(h["rollback"]["complete"] and h["rollback"]["restored"] > 0 for h in heals)
    finally:
        if client is not None:
            client.close()
        healer.close()
        server.close()
