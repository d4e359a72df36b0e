"""The heal shown on the project's login server (the paper's Figure 2), behind the same gateway.

Used when the healer cannot yet heal Apache: ``targets/login_server.c`` has the planted
``check_credentials`` overflow; ``policies/figure3.pol`` (the paper's Figure 3) makes a healed
call return 0 (denied) instead of whatever error virtualization would guess.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import netns
import targets
from demo._show import LOG_WORDS, Narrator, log_lines, quote
from demo.stack import healer_attached

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "figure3.pol"
PORT = 7000
ATTACK = b"LOGIN " + b"A" * 120 + b" guess\n"


def _start(ns: str, binary: Path, port: int) -> subprocess.Popen[bytes]:
    proc = netns.popen_in(ns, [str(binary), str(port)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    netns.wait_listening(ns, "127.0.0.1", port, proc=proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def talk(ns: str, host: str, port: int, lines: bytes, replies: int,
         timeout: float = 10.0) -> bytes:
    """Send ``lines``; read until ``replies`` newline-terminated replies or EOF."""
    sock = netns.socket_in(ns)
    sock.settimeout(timeout)
    data = bytearray()
    with sock:
        sock.connect((host, port))
        sock.sendall(lines)
        with contextlib.suppress(ConnectionResetError):
            while data.count(b"\n") < replies and (chunk := sock.recv(4096)):
                data.extend(chunk)
    return bytes(data)


def heal(show: Narrator, stack: contextlib.ExitStack, work: Path, topo: netns.Topology) -> bool:
    """The exploit act. True when the attack was healed and the client saw DENIED."""
    binary = targets.build("login_server", opt="-O2", stack_protector=True)
    show.step("A real exploit: the paper's Figure 2 login server",
              "check_credentials() copies the user name into a 16-byte stack buffer. An overlong "
              "name smashes the stack. First, what the attack does WITHOUT the healer:")
    victim = _start(topo.server_ns, binary, PORT + 1)
    try:
        answer = talk(topo.server_ns, "127.0.0.1", PORT + 1, ATTACK, 1)
        status = victim.wait(10)
    finally:
        _stop(victim)
    show.detail(f"unprotected login_server answered {quote(answer)} and died "
                f"(exit status {status}: stack smashing detected)")
    server = _start(topo.server_ns, binary, PORT)
    stack.callback(_stop, server)
    control = work / "ctl-login.sock"
    vlog = stack.enter_context(open(work / "vproxy-login.log", "wb"))  # noqa: SIM115
    stack.enter_context(netns.gateway(topo, listen=(topo.gw_client_addr, PORT),
                                      upstream=(topo.server_addr, PORT), control=control,
                                      extra=["--protocol", "line"], log=vlog))
    coverage = work / "login-supervised.txt"
    coverage.write_text("check_credentials\n")
    stack.enter_context(healer_attached(server.pid, control, work / "healer-login.log",
                                        "--policy", str(POLICY), "--coverage",
                                        f"list:{coverage}"))
    show.detail(f"now protected: healer attached to login_server pid {server.pid} with the "
                f"paper's Figure 3 policy ({POLICY.name}), gateway on "
                f"{topo.gw_client_addr}:{PORT}. The same attack through the gateway:")
    with netns.capture(topo.client_ns) as cap:
        answer = talk(topo.client_ns, topo.gw_client_addr, PORT, ATTACK, 1)
    on_wire = cap.from_port(PORT)
    show.detail(f"what reached the client: {quote(on_wire)}")
    for line in log_lines(work / "healer-login.log", LOG_WORDS) + \
            log_lines(work / "vproxy-login.log", LOG_WORDS):
        show.detail(f"log: {line}")
    if answer != b"DENIED\n" or on_wire != answer or server.poll() is not None:
        show.failed(f"expected DENIED from a live server; got {quote(answer)}, "
                    f"server {'alive' if server.poll() is None else 'dead'}")
        return False
    show.ok("healed: stack smash caught, memory rolled back, check_credentials returned 0; the "
            "client got a clean DENIED and nothing else")

    show.step("The login server still serves",
              "Same process, same connection handling: a ping and a legitimate login.")
    answer = talk(topo.client_ns, topo.gw_client_addr, PORT,
                  b"PING\nLOGIN alice wonderland\n", 2)
    show.detail(f"client got: {quote(answer)}")
    if answer != b"PONG\nOK welcome alice\n" or server.poll() is not None:
        show.failed("the healed server does not answer correctly")
        return False
    show.ok(f"login_server pid {server.pid} alive and correct after the heal")
    return True
