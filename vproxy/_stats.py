"""The gateway's counters and hold-time percentiles (what ``vproxy stats`` / ``STATS`` report)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

_RESERVOIR: Final = 4096


@dataclass(slots=True)
class Stats:
    """Counters of one gateway since it started; ``hold_times`` are seconds, most recent kept.

    Written by trio and by the relay thread, never at once (``vproxy/_turns.py``).
    """

    connections: int = 0
    active: int = 0
    upstream_failures: int = 0
    bytes_passed: int = 0  # relayed unheld
    bytes_held: int = 0
    bytes_released: int = 0
    bytes_discarded: int = 0
    bytes_replayed: int = 0
    committed: int = 0
    aborted: int = 0
    replacements: int = 0
    bounds_fired: int = 0
    refused_controllers: int = 0
    hold_times: list[float] = field(default_factory=list)

    def trim(self) -> None:
        """Keep the hold-time reservoir bounded (called after a pump adds to it)."""
        if len(self.hold_times) > _RESERVOIR:
            del self.hold_times[: len(self.hold_times) - _RESERVOIR // 2]

    def percentiles(self) -> dict[str, float]:
        """p50/p90/p99/max of recent hold times in microseconds (empty when nothing was held)."""
        if not self.hold_times:
            return {}
        ordered = sorted(self.hold_times)
        last = len(ordered) - 1
        pick = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "max": 1.0}
        return {k: round(ordered[min(last, int(q * len(ordered)))] * 1e6, 1)
                for k, q in pick.items()}

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {k: getattr(self, k) for k in self.__slots__
                                   if k != "hold_times"}
        data["hold_us"] = self.percentiles()
        return data

    def to_json(self) -> str:
        """One line of JSON (no newline inside), as the ``STATS`` answer carries it."""
        return json.dumps(self.to_dict(), separators=(",", ":"))
