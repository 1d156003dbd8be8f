"""Exception types: every user-caused error is a ``ValueError`` subclass with a one-line message."""

from __future__ import annotations


class FedloraError(ValueError):
    """Base class of the errors fedlora raises for bad input."""


class InvalidUpdateError(FedloraError):
    """A client's update cannot be aggregated; names the client and, where known, the module."""

    def __init__(self, problem: str, *, client_id: int, module: str | None = None) -> None:
        self.client_id = client_id
        self.module = module
        where = f"client {client_id}" + (f", module {module!r}" if module is not None else "")
        super().__init__(f"{where}: {problem}")


class EmptyRoundError(FedloraError):
    """An aggregation was asked for with no client updates."""


class UnknownNameError(FedloraError):
    """A registry lookup by name failed; the message lists the valid names."""


class ConfigError(FedloraError):
    """A configuration value is invalid; the message names the key."""
