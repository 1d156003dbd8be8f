"""One round's update merged into the frozen base weights (FLoRA), as it travels and is stored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedlora.lora.factors import FoldedFactors


@dataclass(frozen=True)
class MergedRound:
    """The stacked, scale-folded factors that round ``round`` merged into the base weights.

    Sent as factors (``R x in`` and ``out x R`` per module, ``R`` the round's stacked rank), never
    as a dense ``out x in`` total: at LLM shapes that is one to two orders of magnitude smaller.
    """

    round: int
    modules: Mapping[str, FoldedFactors]

    def num_parameters(self) -> int:
        return sum(f.A.numel() + f.B.numel() for f in self.modules.values())

    def num_bytes(self) -> int:
        return sum(
            f.A.numel() * f.A.element_size() + f.B.numel() * f.B.element_size()
            for f in self.modules.values()
        )
