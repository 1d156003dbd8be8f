"""FFA-LoRA (Sun et al., ICLR 2024): ``A`` frozen and shared, only ``B`` trained and averaged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation.base import Aggregator, pad_factors, weighted_sum
from fedlora.aggregation.state import GlobalState
from fedlora.aggregation.weights import Weighting
from fedlora.errors import InvalidUpdateError
from fedlora.lora.factors import FoldedFactors
from fedlora.lora.update import ClientUpdate


class FFA(Aggregator):
    """``B = sum_k p_k pad0(s_k B_k)`` with the shared ``A`` kept as it is.

    Because every client's ``A_k`` is the first ``r_k`` rows of one shared ``A``, the result is
    exactly ``sum_k p_k s_k B_k A_k``: averaging ``B`` loses nothing.  Clients must freeze ``A``
    (``trains_A = False``); an update whose ``A`` differs from the shared one is rejected.
    """

    name = "ffa"
    trains_A = False

    def __init__(self, *, weighting: Weighting = "num_examples", atol: float = 1e-6) -> None:
        super().__init__(weighting=weighting)
        self.atol = atol

    def check_update(self, update: ClientUpdate, previous: GlobalState) -> None:
        """``A`` must be exactly what the client was served from ``previous``."""
        for name, factors in update.modules.items():
            served = previous.slots(name, factors.r).A.to(factors.A.dtype)
            if not torch.allclose(factors.A, served, rtol=0.0, atol=self.atol):
                raise InvalidUpdateError(
                    "changed the frozen A; FFA-LoRA clients must train B only",
                    client_id=update.client_id,
                    module=name,
                )

    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        # check_update made sure every A is the served one: keep the full-precision copy (a
        # copy of a client's, so that the client's update is freed with the module).
        longest = max(factors, key=lambda f: f.rank)
        shared = longest.A.clone()
        if previous is not None and previous.rank >= longest.rank:
            shared = previous.A
        rank = shared.shape[0]
        B = weighted_sum([pad_factors(f, rank).B for f in factors], weights)
        return FoldedFactors(A=shared, B=B)
