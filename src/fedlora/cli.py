"""Command-line interface (placeholder until the engine lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    print("fedlora: the engine is not wired yet")
    return 0
