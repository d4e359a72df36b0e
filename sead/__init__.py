"""Shared infrastructure of the sead tools: logging set-up and the CLI frame."""
