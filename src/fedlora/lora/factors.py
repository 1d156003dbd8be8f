"""LoRA factors in PEFT's shape convention, and their scale-folded form.

For a linear layer ``W: out x in`` a rank-``r`` LoRA adapter has ``A: r x in`` and ``B: out x r``;
its effective update is ``s * B @ A`` with ``s = alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA).
Aggregation works on *folded* factors ``(A, s * B)`` so that clients with different ranks and
alphas contribute their true update; factors are unfolded with the receiving client's own scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedlora.lora.settings import LoraSettings, lora_scale


@dataclass(frozen=True)
class LoraFactors:
    """One client's adapter on one module: ``A (r x in)``, ``B (out x r)``, ``alpha`` and ``r``."""

    A: Tensor
    B: Tensor
    alpha: float
    r: int
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.r, self.use_rslora)

    def folded(self, dtype: torch.dtype | None = None) -> FoldedFactors:
        """The scale-folded factors ``(A, s * B)`` whose product is the effective update.

        With ``dtype`` the factors are cast before folding, so half-precision uploads are
        scaled at the precision they are aggregated in.
        """
        A, B = (self.A, self.B) if dtype is None else (self.A.to(dtype), self.B.to(dtype))
        return FoldedFactors(A=A, B=B * self.scale)

    def delta(self) -> Tensor:
        """The effective weight update ``s * B @ A`` (``out x in``)."""
        return self.folded().delta()


@dataclass(frozen=True)
class FoldedFactors:
    """Scale-folded factors: ``A (R x in)`` and ``B (out x R)`` with ``B @ A`` the effective update.

    The rank ``R`` may be zero: the module then has no adapter slots yet but keeps its shape.
    """

    A: Tensor
    B: Tensor

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    def delta(self) -> Tensor:
        return self.B @ self.A

    def unfold(self, r: int, lora: LoraSettings) -> LoraFactors:
        """Hand the first ``r`` slots to a client that trains rank ``r`` with ``lora``'s scale."""
        if r > self.rank:
            raise ValueError(f"cannot unfold rank {r} from folded factors of rank {self.rank}")
        return LoraFactors(
            A=self.A[:r].clone(),
            B=self.B[:, :r] / lora.scale(r),
            alpha=lora.alpha,
            r=r,
            use_rslora=lora.use_rslora,
        )

    @classmethod
    def empty(cls, out_features: int, in_features: int, dtype: torch.dtype) -> FoldedFactors:
        """Rank-zero factors that only carry the module's shape."""
        return cls(
            A=torch.zeros(0, in_features, dtype=dtype), B=torch.zeros(out_features, 0, dtype=dtype)
        )
