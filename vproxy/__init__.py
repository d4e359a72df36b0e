"""vproxy: the trio gateway that holds a protected server's output until the healer commits it."""
