"""Norm-weighted replication: Byun & Lee's slot-wise average with HetLoRA's update-norm weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation.hetlora import update_norm
from fedlora.aggregation.replication import Replication, ownership
from fedlora.lora.factors import FoldedFactors


class NormReplication(Replication):
    """Replication padding with each client weighted by the norm of its update, per module.

    Slot ``j`` is ``sum_{k in S_j} n_k A_k[j] / sum_{k in S_j} n_k`` (and likewise the columns of
    the folded ``B``), where ``S_j`` are the clients that own slot ``j`` and
    ``n_k = ||s_k B_k A_k||_F``.  The two parts are published: the slot-wise average over owners
    is replication padding (Byun & Lee, NAACL 2025), which removes zero padding's dilution; the
    weights are HetLoRA's (Cho et al., EMNLP 2024), which Byun & Lee compare against as
    "Frobenius-norm-weighted zero padding".  Their combination is ours: it keeps replication's
    undiluted high-rank slots and lets the clients that moved their adapter more count more.
    As in HetLoRA the data sizes do not enter, except for a slot whose owners all sent a zero
    update, which falls back to their data-size weights; dense tensors are averaged with them.

    FedSA-LoRA (Guo et al., ICLR 2025) was the other candidate and is not implemented: its
    clients keep ``B`` and upload only ``A``, which needs client state that outlives a Flower
    node's process, updates without ``B`` on the wire, and an evaluation of each client's own
    adapter (the server holds no ``B``); none of these exist here yet.
    """

    name = "norm_replication"

    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        owns = ownership(factors).to(weights.dtype)
        norms = torch.stack([update_norm(f) for f in factors]).to(weights.dtype)
        by_norm = norms[:, None] * owns
        by_size = weights[:, None] * owns
        owned = torch.where(by_norm.sum(dim=0) > 0, by_norm, by_size)
        return self.slotwise_mean(factors, owned, previous)
