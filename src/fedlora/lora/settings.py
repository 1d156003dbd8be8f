"""The LoRA settings a run's adapters share: PEFT's ``LoraConfig`` less the ranks and the targets.

PEFT keeps alpha, rsLoRA, dropout, target modules and the rank pattern in one ``LoraConfig``.
Here a client's ranks are its rank map (they differ per client and per round) and the target
modules belong to the model (they name the global state's modules), so one :class:`LoraSettings`
holds the rest: how an adapter scales its update and its dropout.  It is built once from the
run's config and handed to whatever serves, loads or reads factors, instead of alpha and the
rsLoRA flag travelling as separate arguments that can disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedlora.errors import ConfigError


def lora_scale(alpha: float, r: int, use_rslora: bool = False) -> float:
    """PEFT's LoRA scaling: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


@dataclass(frozen=True)
class LoraSettings:
    """PEFT's ``lora_alpha``, ``use_rslora`` and ``lora_dropout`` of a client's adapter.

    Never defaulted for ``alpha``: a hard-coded alpha silently rescales every update.
    """

    alpha: float
    use_rslora: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"lora alpha must be a positive number, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.dropout}")

    def scale(self, r: int) -> float:
        """The scale of a rank-``r`` adapter with these settings."""
        return lora_scale(self.alpha, r, self.use_rslora)
