"""fedlora: federated LoRA fine-tuning with heterogeneous client ranks."""

from fedlora.errors import (
    ConfigError,
    EmptyRoundError,
    FedloraError,
    InvalidUpdateError,
    UnknownNameError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EmptyRoundError",
    "FedloraError",
    "InvalidUpdateError",
    "UnknownNameError",
    "__version__",
]
