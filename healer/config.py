"""The configuration the host hands to the agent (``rpc.exports.init(config)``, docs/agent.md).

``build_config`` reads every file named on the command line (coverage LIST, repair policy, profile,
control token) so that a bad file is reported before anything is injected, and again on reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from healer.errors import HealerError

COVERAGE_HELP = "none | all | random:PCT | cosak[:DEPTH] | list:FILE"
DEFAULT_COSAK_DEPTH = 6


def parse_coverage(spec: str) -> dict[str, Any]:
    """``--coverage`` text to the agent's coverage object.

    Returns:
        ``{"mode": ...}`` plus ``percent`` (random), ``depth`` (cosak) or ``functions`` and ``file``
        (list: one function name a line, ``#`` comments).

    Error handling:
        HealerError for an unknown mode, a bad number or an unreadable/empty LIST file.
    """
    mode, _, arg = spec.partition(":")
    mode = mode.strip().lower()
    if mode in ("none", "all") and not arg:
        return {"mode": mode}
    if mode == "random":
        try:
            pct = float(arg)
        except ValueError:
            raise HealerError(f"--coverage random needs a percentage, e.g. random:25 (got {spec!r})"
                              ) from None
        if not 0 <= pct <= 100:
            raise HealerError(f"--coverage random:{arg}: the percentage must be within 0-100")
        return {"mode": "random", "percent": pct}
    if mode == "cosak":
        try:
            depth = int(arg) if arg else DEFAULT_COSAK_DEPTH
        except ValueError:
            raise HealerError(f"--coverage cosak takes a depth, e.g. cosak:6 (got {spec!r})"
                              ) from None
        if depth < 1:
            raise HealerError(f"--coverage cosak:{arg}: the depth must be at least 1")
        return {"mode": "cosak", "depth": depth}
    if mode == "list" and arg:
        return {"mode": "list", "file": arg, "functions": _read_list(Path(arg))}
    raise HealerError(f"unknown coverage {spec!r}; use {COVERAGE_HELP}")


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise HealerError(f"cannot read the coverage list {path}: {reason}; give a readable file"
                          ) from None
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise HealerError(f"the coverage list {path} names no function; write one name a line")
    return names


@dataclass(frozen=True, slots=True)
class Options:
    """What the operator asked for; re-read on every reload."""

    coverage: str = "cosak"
    policy: Path | None = None
    profile: Path | None = None
    control: Path | None = None
    rollback: bool = True
    disabled: tuple[str, ...] = ()


def build_config(options: Options, binary: Path | None) -> dict[str, Any]:
    """Read every file of ``options`` and return the agent config.

    Args:
        options: the command-line choices.
        binary: the target's executable, to check policy names against its symbol table.

    Returns:
        ``{coverage, policy, profile, control, flags}`` as docs/agent.md describes.

    Error handling:
        HealerError naming the file and the problem (policy errors keep their file:line:col).
    """
    return {
        "coverage": parse_coverage(options.coverage),
        "policy": _policy(options.policy, binary),
        "profile": _profile(options.profile),
        "control": _control(options.control),
        "flags": {"rollback": options.rollback},
        "rollback": options.rollback,  # read by 20_memlog.js
        "disabled": list(options.disabled),
    }


def _policy(path: Path | None, binary: Path | None) -> Any:
    if path is None:
        return None
    from healer import policy

    try:
        return policy.load(path, binary)
    except policy.PolicyError as exc:
        raise HealerError(f"the repair policy is invalid:\n{exc}") from None
    except policy.BinaryError as exc:
        raise HealerError(f"cannot check the policy against {binary}: {exc}") from None


def _profile(path: Path | None) -> Any:
    if path is None:
        return None
    from healer import profile

    try:
        return profile.agent_tables(profile.load(path))
    except profile.ProfileError as exc:
        raise HealerError(str(exc)) from None


def _control(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    token_file = Path(f"{path}.token")
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise HealerError(f"cannot read the pairing token {token_file}: {exc.strerror}; start the "
                          f"gateway with 'vproxy serve --control {path}' first") from None
    if not token:
        raise HealerError(f"the pairing token {token_file} is empty; restart the gateway")
    return {"path": str(path), "token": token}
