"""Shared infrastructure of the sead tools (logging set-up). Product packages import nothing else from here."""
