"""Behaviour profiles and Smart Error Virtualization (STEM paper section 6; the SEV paper).

Public front:

- ``Profile``/``FunctionProfile``, ``load``, ``save``, ``merge``, ``ProfileError``: the versioned
  profile file (docs/profiles.md);
- ``ContextTracker``/``ProfileBuilder``: execution-window contexts (Figure 4) from a call trace;
- ``predictability``/``predictability_by_size``: the return-value predictability score (Figure 5);
- ``Predictor``/``accuracy``: return-value prediction from the context window;
- ``agent_tables``/``STRATEGIES``/``check_settings``: the trained profile as the agent's SEV
  tables;
- ``diff``/``FunctionChange``: regression testing between two profiles;
- ``ProfileSession``/``SessionError``: the profile plugin running in a process (Frida);
- ``call_line``/``return_line``: the SEV paper's trace format.
"""

from healer.profile._context import ContextTracker, ProfileBuilder
from healer.profile._diff import FunctionChange, diff
from healer.profile._model import FunctionProfile, Profile, ProfileError, load, merge, save
from healer.profile._predict import Predictor, accuracy
from healer.profile._score import predictability, predictability_by_size
from healer.profile._session import ProfileSession, SessionError
from healer.profile._tables import STRATEGIES, agent_tables, check_settings
from healer.profile._trace import call_line, return_line

__all__ = [
    "STRATEGIES", "ContextTracker", "FunctionChange", "FunctionProfile", "Predictor", "Profile",
    "ProfileBuilder", "ProfileError", "ProfileSession", "SessionError", "accuracy", "agent_tables",
    "call_line", "check_settings", "diff", "load", "merge", "predictability",
    "predictability_by_size", "return_line", "save",
]
