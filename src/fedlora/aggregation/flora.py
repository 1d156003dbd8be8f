"""FLoRA (Wang et al., NeurIPS 2024): stack every client's factors and merge into the base."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation.base import Aggregator
from fedlora.lora.factors import FoldedFactors


class FLoRA(Aggregator):
    """``B = [s_1 B_1 ... s_K B_K]`` and ``A = [p_1 A_1; ...; p_K A_K]``, so ``B @ A`` is exactly
    ``sum_k p_k s_k B_k A_k`` for any mix of ranks (stacked rank ``sum_k r_k``).

    The stacked update is returned in ``GlobalState.merge_into_base``; the runner merges it into
    the frozen base weights and every client restarts from a fresh LoRA the next round.
    """

    name = "flora"
    merges_into_base = True

    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        A = torch.cat([w * f.A for f, w in zip(factors, weights, strict=True)])
        B = torch.cat([f.B for f in factors], dim=1)
        return FoldedFactors(A=A, B=B)
