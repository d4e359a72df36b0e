"""Execution-window contexts (STEM paper, Figure 4) and building a profile from a call trace.

The context of a call is read off the call tree of its thread: first the previously executed
siblings (most recent first), then the parent; then the parent's previous siblings and its parent,
and so on until the window width or the root is reached. In Figure 4 the window of function 8 is
7, 6, 5, 2, 1, where a call-stack view would only see 6, 5, 1.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from healer.profile._model import Profile, Window


@dataclass
class _Frame:
    name: str | None
    window: Window
    args: tuple[int, ...]
    children: deque[str] = field(default_factory=deque)


class ContextTracker:
    """Follows one thread's calls and returns and yields each call's execution window.

    Args:
        width: the window width (number of functions in a context).
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self._stack: list[_Frame] = [_Frame(None, (), ())]

    def window(self) -> Window:
        """The context a call made now would have."""
        out: list[str] = []
        skip_last = False
        for frame in reversed(self._stack):
            siblings = list(frame.children)
            if skip_last:
                siblings = siblings[:-1]
            out.extend(reversed(siblings))
            if frame.name is not None:
                out.append(frame.name)
            if len(out) >= self.width:
                break
            skip_last = True
        return tuple(out[: self.width])

    def call(self, name: str, args: tuple[int, ...] = ()) -> Window:
        """Enter ``name``; returns its window."""
        w = self.window()
        top = self._stack[-1]
        top.children.append(name)
        if len(top.children) > self.width:
            top.children.popleft()
        self._stack.append(_Frame(name, w, args))
        return w

    def ret(self, name: str) -> tuple[Window, tuple[int, ...]] | None:
        """Leave ``name``; returns (its window, its arguments), or None for an unmatched return.

        A return of a function below the top (a frame left by longjmp or a missed return) unwinds
        the frames above it.
        """
        for i in range(len(self._stack) - 1, 0, -1):
            if self._stack[i].name == name:
                frame = self._stack[i]
                del self._stack[i:]
                return frame.window, frame.args
        return None


class ProfileBuilder:
    """Turns call/return events (per thread) into a Profile.

    Args:
        width: window width of the profile's contexts.
        ret_bits: the width return values were sign-extended from (kept in the profile).
    """

    def __init__(self, width: int, ret_bits: int = 64) -> None:
        self.profile = Profile(window=width, ret_bits=ret_bits)
        self._threads: dict[int, ContextTracker] = {}
        self._after: dict[int, tuple[str, int]] = {}

    def _tracker(self, tid: int) -> ContextTracker:
        t = self._threads.get(tid)
        if t is None:
            t = self._threads[tid] = ContextTracker(self.profile.window)
        return t

    def call(self, tid: int, name: str, args: tuple[int, ...] = ()) -> Window:
        after = self._after.pop(tid, None)
        if after is not None:
            self.profile.function(after[0]).add_successor(after[1], name)
        return self._tracker(tid).call(name, args)

    def ret(self, tid: int, name: str, value: int) -> None:
        got = self._tracker(tid).ret(name)
        if got is None:
            return
        window, args = got
        self.profile.function(name).add_call(window, args, value)
        self._after[tid] = (name, value)
