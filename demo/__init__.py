"""``make demo``: a protected server behind the self-healing gateway, attacked and healed."""
