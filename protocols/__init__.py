"""Sans-IO wire formats: the commit protocol (control.py) and the framers the gateway uses.

Nothing here opens a socket or imports Frida; the gateway and the healer both use these modules and
never import each other.
"""

from protocols._framing import ProtocolError

__all__ = ["ProtocolError"]
