"""Network namespaces (pyroute2) so that the protected server's only way in or out is the gateway."""
