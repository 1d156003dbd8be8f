"""Zero padding (HeteroLoRA / HetLoRA style): pad every client to the round's largest rank."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fedlora.aggregation.base import Aggregator, weighted_zero_padded_mean
from fedlora.lora.factors import FoldedFactors


class ZeroPadding(Aggregator):
    """``A = sum_k p_k pad0(A_k)``, ``B = sum_k p_k pad0(s_k B_k)`` at the round's largest rank.

    A slot that only high-rank clients own is averaged with the zeros of the low-rank clients, so
    with one rank-``r_max`` client among ``K`` equal-weight clients it shrinks to ``1/K`` (the
    dilution that replication padding removes).  The global rank is the round's largest rank.
    """

    name = "zero_padding"

    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        return weighted_zero_padded_mean(factors, weights)
