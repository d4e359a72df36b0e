"""``vproxy record``: write a scenario from live client traffic to payfront."""

from __future__ import annotations

import argparse
import math
import os
import signal
from functools import partial
from pathlib import Path

import structlog
import trio

from sead.cli import CliError
from vproxy import scenario as sc
from vproxy._cmd_replay import _addr

NAME = "record"
HELP = "record client traffic to payfront as a scenario file (YAML) for vproxy replay"
DESCRIPTION = """\
Listen where clients connect, relay every connection to payfront, and write each one down as a
conversation: the lines the client sent and the lines payfront answered. The ledger is audited with
DUMP when recording starts (the scenario's accounts) and when it stops (the expected final
balances). Stop with Ctrl-C, or give --conversations N or --duration SECONDS. Then replay the file
against a new build with `vproxy replay` (on fresh servers holding the same initial balances).

  vproxy record --listen 127.0.0.1:7100 --front 127.0.0.1:7000 --ledger 127.0.0.1:7001 \\
                -o tests/scenarios/recorded.yaml --conversations 20
  vproxy replay --payfront-bin ./payfront-new tests/scenarios/recorded.yaml

Recorded conversations are all kind: legit; mark the attacks hostile by hand. Replies that depend on
how concurrent clients interleaved (a balance) may differ on replay: turn them into {match: REGEX}.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=_addr, required=True, metavar="HOST:PORT",
                        help="where clients connect (port 0: any, printed on stderr)")
    parser.add_argument("--front", type=_addr, required=True, metavar="HOST:PORT",
                        help="the running payfront (or the gateway in front of it)")
    parser.add_argument("--ledger", type=_addr, required=True, metavar="HOST:PORT",
                        help="the ledger, audited with DUMP at start and stop")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.yaml",
                        help="the scenario file to write")
    parser.add_argument("--name", default="recorded", help="the scenario's name")
    parser.add_argument("--conversations", type=int, metavar="N",
                        help="stop after N client connections have ended")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")


async def record(args: argparse.Namespace,
                 task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> str:
    """Record until the stop condition; returns the YAML text. ``task_status`` gets the port."""
    endpoints = sc.Endpoints(sc.tcp_opener(*args.front), sc.tcp_opener(*args.ledger),
                             "{}:{}".format(*args.front), "{}:{}".format(*args.ledger))
    recorder = sc.Recorder(endpoints.front, endpoints)
    await recorder.start()
    try:
        listeners = await trio.open_tcp_listeners(args.listen[1], host=args.listen[0])
    except OSError as exc:
        raise CliError(f"cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror}; "
                       "pick a free port (0 picks one)") from None
    port = listeners[0].socket.getsockname()[1]
    structlog.get_logger("vproxy.record").info("recording", listen=f"{args.listen[0]}:{port}",
                                               front=endpoints.front_name)
    task_status.started(port)
    with trio.move_on_after(args.duration if args.duration is not None else math.inf):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.serve_listeners, recorder.handle, listeners))
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            if args.conversations is not None:
                await recorder.wait_finished(args.conversations)
                nursery.cancel_scope.cancel()
    return await recorder.scenario_yaml(args.name)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    # Ctrl-C (or a kill) ends the recording and still writes the file.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def run(args: argparse.Namespace) -> int:
    folder = args.output.resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise CliError(f"cannot write {args.output}: {folder} is not a writable directory", 2)
    try:
        text = trio.run(record, args)
    except sc.UnreachableError as exc:
        raise CliError(str(exc)) from None
    args.output.write_text(text)
    sc.parse(text, str(args.output))  # what we wrote must load back
    print(f"wrote {args.output}")
    return 0
