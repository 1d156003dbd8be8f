"""Replication padding (Byun & Lee, NAACL 2025): pad low-rank clients with high-rank values."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation.base import Aggregator
from fedlora.aggregation.weights import Weighting
from fedlora.lora.factors import FoldedFactors


class Replication(Aggregator):
    """Slot-wise weighted average over only the clients that own each rank slot.

    Filling a low-rank client's missing slots with the (weighted) average of the clients that own
    them and then averaging over everyone is the same as averaging slot ``j`` over ``S_j = {k :
    r_k >= j}`` with weights ``p_k / sum_{S_j} p``.  Nothing is diluted: a slot owned by one client
    keeps that client's value; slots owned by all equal FedIT.  Slots no participant owns keep
    their previous global value (``keep_unowned_slots``), so a round without high-rank clients
    does not erase what they learned.
    """

    name = "replication"

    def __init__(
        self, *, weighting: Weighting = "num_examples", keep_unowned_slots: bool = True
    ) -> None:
        super().__init__(weighting=weighting)
        self.keep_unowned_slots = keep_unowned_slots

    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        owned = weights[:, None] * ownership(factors).to(weights.dtype)
        return self.slotwise_mean(factors, owned, previous)

    def slotwise_mean(
        self, factors: Sequence[FoldedFactors], owned: Tensor, previous: FoldedFactors | None
    ) -> FoldedFactors:
        """Slot ``j`` averaged over the clients ``k`` with weights ``owned[k, j]``, normalised.

        ``owned`` is zero where client ``k`` does not own slot ``j``; every slot of the round
        needs a positive total.
        """
        rank = owned.shape[1]
        slot_weights = owned / owned.sum(dim=0, keepdim=True)
        A = factors[0].A.new_zeros(rank, factors[0].in_features)
        B = factors[0].B.new_zeros(factors[0].out_features, rank)
        for f, w in zip(factors, slot_weights, strict=True):
            A[: f.rank] += w[: f.rank, None] * f.A
            B[:, : f.rank] += f.B * w[None, : f.rank]
        if self.keep_unowned_slots and previous is not None and previous.rank > rank:
            A = torch.cat([A, previous.A[rank:]])
            B = torch.cat([B, previous.B[:, rank:]], dim=1)
        return FoldedFactors(A=A, B=B)


def ownership(factors: Sequence[FoldedFactors]) -> Tensor:
    """``owns[k, j]``: client ``k`` owns rank slot ``j`` (``j < r_k``), up to the round's rank."""
    ranks = torch.tensor([f.rank for f in factors])
    return ranks[:, None] > torch.arange(int(ranks.max()))[None, :]
