"""vproxy: the trio gateway that holds a protected server's output until the healer commits it.

Public API (everything else is private)::

    config = GatewayConfig(routes=(Route(Address("127.0.0.1", 0), Address("127.0.0.1", 8080)),),
                           control="/run/sead/ctl.sock")
    serving = await nursery.start(serve, config)   # Serving: listening addresses, control, token

``vproxy.testing.ScriptedController`` speaks the control protocol for tests.
"""

from vproxy._config import Address, GatewayConfig, Route
from vproxy._gateway import Gateway, GatewayError, Serving, serve

__all__ = ["Address", "Gateway", "GatewayConfig", "GatewayError", "Route", "Serving", "serve"]
