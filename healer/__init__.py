"""healer: a Frida agent that runs a native server's functions as transactions and heals faults."""
