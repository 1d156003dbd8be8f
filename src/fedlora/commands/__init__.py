"""Implementations of the CLI's commands (imported lazily: torch loads only when needed)."""
