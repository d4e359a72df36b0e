"""``python -m demo`` (``make demo``): Apache behind the self-healing gateway, attacked and healed.

Unattended, about a minute. Every namespace and process it starts is removed at the end, also on
Ctrl-C, SIGTERM or failure. Exit status 0 only if the heal happened and the client got a clean
answer; 1 otherwise; 130 when interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from demo import _steps
from demo._show import Narrator


def _interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every with-block cleans up. Only in this process: pyroute2
    forks helpers that are ended with SIGTERM, and they must just die."""
    me = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != me:
            os._exit(0)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, ptrace): run 'sudo make demo'",
              file=sys.stderr)
        return 1
    _interrupt_on_sigterm()
    show = Narrator(total=len(_steps.STEPS))
    print("sead demo: a native server (Debian's Apache httpd) behind the self-healing gateway.")
    print("Nothing is changed outside the namespaces and temp files this demo creates and removes.")
    work = Path(tempfile.mkdtemp(prefix="sead-demo-", dir="/dev/shm"))
    work.chmod(0o711)  # Apache's workers (www-data) reach the control socket inside
    healed = False
    try:
        with contextlib.ExitStack() as stack:
            healed = _steps.run(show, stack, work)
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started has been stopped and removed.")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    show.summary("every fault was healed and every client got a clean answer" if healed
                 else "the heal did NOT happen (see the failed steps above)")
    return 0 if healed else 1


if __name__ == "__main__":
    sys.exit(main())
