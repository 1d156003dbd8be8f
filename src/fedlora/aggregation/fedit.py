"""FedIT (Zhang et al. 2023): FedAvg of each LoRA factor separately; homogeneous ranks only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from fedlora.aggregation.base import Aggregator, weighted_sum
from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors


class FedIT(Aggregator):
    """``A = sum_k p_k A_k`` and ``B = sum_k p_k (s_k B_k)``.

    The product of the averages is not the average of the products (the cross terms that
    FlexLoRA removes); this is the baseline every heterogeneous method is compared with.
    """

    name = "fedit"

    def check_tiers(self, tiers: Sequence[Any]) -> None:
        distinct = sorted({str(tier) for tier in tiers})
        if len(distinct) > 1:
            raise FedloraError(
                f"fedit averages factors of one rank, but the rank policy gives {distinct}; "
                "give every client one rank (ranks.policy = 'fixed'), or use zero_padding, "
                "replication or flexlora"
            )

    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        ranks = sorted({f.rank for f in factors})
        if len(ranks) > 1:
            raise FedloraError(
                f"fedit needs equal ranks, but module {module!r} has ranks {ranks} in this round; "
                "use zero_padding, replication or flexlora for heterogeneous ranks"
            )
        return FoldedFactors(
            A=weighted_sum([f.A for f in factors], weights),
            B=weighted_sum([f.B for f in factors], weights),
        )
