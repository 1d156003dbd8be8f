"""FlexLoRA (Bai et al., NeurIPS 2024): average full-size updates, SVD back to each rank."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor

from fedlora.aggregation.base import Aggregator
from fedlora.aggregation.state import GlobalState
from fedlora.aggregation.svd import SVD_METHODS, SvdMethod, noise_floor, stacked, top_svd_of_sum
from fedlora.aggregation.weights import Weighting
from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors
from fedlora.lora.update import ClientUpdate

SigmaPlacement = Literal["B", "sqrt", "A"]
SIGMA_PLACEMENTS: tuple[SigmaPlacement, ...] = ("B", "sqrt", "A")


class FlexLoRA(Aggregator):
    """``dW = sum_k p_k s_k B_k A_k``; its top singular triplets become the global factors.

    A client of rank ``r`` receives the first ``r`` slots, whose product is the best rank-``r``
    approximation of ``dW`` (Eckart–Young); if ``r >= rank(dW)`` it receives ``dW`` exactly.

    Options
    -------
    sigma : "B" (the reference code: ``B = U S``, ``A = V^T``), "sqrt" (``U sqrt(S)``,
        ``sqrt(S) V^T``) or "A" (``U``, ``S V^T``, as HLoRA).  The product is the same.  With
        "sqrt", a triplet whose singular value is rounding noise (``dW`` of lower rank than the
        slots kept) is split as "B" splits it: ``sqrt(S)`` would leave both factors ~0, a dead
        slot that training never moves, whereas ``A = V^T`` row and ``B ~ 0`` column is a fresh
        slot in PEFT's sense.  Only the split changes, never the product.
    svd : "auto" (the cheapest exact path by shape), "dense" (form ``dW``, full SVD, the
        reference method), "factored" (QRs of the stacked factors and a full ``R x R`` core SVD)
        or "gram" (a QR and a Gram matrix, the top of the squared core by a partial eigensolver,
        projected back on the factors; the fastest once ``R`` is in the hundreds).  See
        :mod:`fedlora.aggregation.svd`.
    max_rank : how many triplets the global state keeps per module, at most the stacked rank
        ``sum_k r_k`` (the triplets beyond it have singular value 0).  ``None`` keeps the rank
        the state already held or the round's largest client rank, whichever is more, so a
        round without high-rank clients does not truncate what they are served later; when the
        round's stacked rank is smaller, fresh slots (``B`` zero, no update) hold the rank.
        An explicit ``max_rank`` is used as given.
    energy : also report, per module and for every client rank of the round, the share of the
        aggregated update's energy ``||dW||_F^2`` that the rank-``r`` truncation keeps
        (FlexLoRA's Figure 8 reads its complement as the SVD truncation error).  Off by
        default: ``||dW||_F^2`` costs two Gram matrices of the stacked factors per module.
    """

    name = "flexlora"

    def __init__(
        self,
        *,
        weighting: Weighting = "num_examples",
        sigma: SigmaPlacement = "B",
        svd: SvdMethod = "auto",
        max_rank: int | None = None,
        energy: bool = False,
    ) -> None:
        super().__init__(weighting=weighting)
        if sigma not in SIGMA_PLACEMENTS:
            raise FedloraError(
                f"flexlora sigma {sigma!r} is not one of {', '.join(SIGMA_PLACEMENTS)}"
            )
        if svd not in SVD_METHODS:
            raise FedloraError(f"flexlora svd {svd!r} is not one of {', '.join(SVD_METHODS)}")
        if max_rank is not None and max_rank < 1:
            raise FedloraError(f"flexlora max_rank must be a positive int, got {max_rank}")
        self.sigma: SigmaPlacement = sigma
        self.svd: SvdMethod = svd
        self.max_rank = max_rank
        self.energy = energy
        self._energy_kept: dict[str, dict[int, float]] = {}

    def configure_federation(self, max_rank: int) -> None:
        """Keep the triplets of the federation's largest rank unless ``max_rank`` was given.

        As the reference code slices one SVD for every rank of the federation, a client of a
        high rank then receives its best approximation even after rounds without its peers.
        """
        if self.max_rank is None:
            self.max_rank = max_rank

    def aggregate(
        self,
        updates: Sequence[ClientUpdate],
        previous: GlobalState,
        *,
        validated: bool = False,
        into: MutableMapping[str, FoldedFactors] | None = None,
    ) -> GlobalState:
        """Aggregate one round; by default no module ends with fewer slots than it held.

        The slots above the round's stacked rank are the fresh ones :meth:`GlobalState.slots`
        serves anyway; keeping them keeps the rank for the next round's SVD.
        """
        self._energy_kept = {}
        state = super().aggregate(updates, previous, validated=validated, into=into)
        if self.max_rank is not None:
            return state
        held = previous.rank_map()
        modules: MutableMapping[str, FoldedFactors] = {} if into is None else into
        for name in list(state.modules):  # into: each module read, then rewritten in place
            rank = max(state.modules[name].rank, held.get(name, 0))
            modules[name] = state.slots(name, rank)
        return replace(state, modules=modules)

    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        keep = self.max_rank if self.max_rank is not None else self._default_rank(factors, previous)
        # Triplets past the stacked rank R have singular value 0 whichever path computes them.
        keep = min(keep, sum(f.rank for f in factors))
        triplets = top_svd_of_sum(factors, weights, keep, self.svd)
        if self.energy:
            ranks = {f.rank for f in factors} | {keep}
            self._energy_kept[module] = energy_kept(factors, weights, triplets.S, ranks)
        U, S, Vh = triplets.U, triplets.S, triplets.Vh
        if self.sigma == "B":
            return FoldedFactors(A=Vh, B=U * S)
        if self.sigma == "A":
            return FoldedFactors(A=S[:, None] * Vh, B=U)
        root = S.sqrt()
        live = S.gt(noise_floor(factors, weights))
        a_scale = torch.where(live, root, torch.ones_like(S))
        b_scale = torch.where(live, root, S)
        return FoldedFactors(A=a_scale[:, None] * Vh, B=U * b_scale)

    def round_report(self) -> dict[str, Any]:
        if not self._energy_kept:
            return {}
        shares = {
            module: {str(rank): share for rank, share in sorted(kept.items())}
            for module, kept in self._energy_kept.items()
        }
        return {"energy_kept": shares}

    @staticmethod
    def _default_rank(factors: Sequence[FoldedFactors], previous: FoldedFactors | None) -> int:
        """The state's rank so far or the round's largest client rank, whichever is more."""
        held = 0 if previous is None else previous.rank
        return max(held, *(f.rank for f in factors))


def energy_kept(
    factors: Sequence[FoldedFactors], weights: Tensor, S: Tensor, ranks: Iterable[int]
) -> dict[int, float]:
    """For each rank ``r``: ``sum_{i<=r} sigma_i^2 / ||dW||_F^2`` of ``dW = sum_k w_k B_k A_k``.

    The total is :func:`squared_norm_of_product` of the stacked factors, so it needs no SVD
    tail; ``S`` holds the top singular values the aggregation computed (a rank beyond them keeps
    all of their energy).  An all-zero ``dW`` keeps everything.
    """
    total = squared_norm_of_product(*stacked(factors, weights))
    cumulative = S.double().square().cumsum(0)
    shares: dict[int, float] = {}
    for rank in ranks:
        kept = float(cumulative[min(rank, len(S)) - 1]) if len(S) and rank > 0 else 0.0
        shares[rank] = 1.0 if total <= 0.0 else min(kept / total, 1.0)
    return shares


NormRoute = Literal["auto", "dense", "gram"]


def squared_norm_of_product(P: Tensor, Q: Tensor, route: NormRoute = "auto") -> float:
    """``||P @ Q||_F^2`` in float64, by the cheaper of two exact routes (``auto``).

    ``dense`` forms the ``out x in`` product (``out * in * R`` multiply-adds); ``gram`` sums
    ``(P^T P) * (Q Q^T)`` (``R^2 (out + in)``), cheaper only while the stacked rank ``R`` is below
    ``out * in / (out + in)``.  In a round of 50 MiniLM clients of FlexLoRA's heavy-tail-strong
    population (``R`` about 9,000) the Gram route takes 34x longer (``benchmarks/energy.py``).
    """
    out_features, total_rank = P.shape
    in_features = Q.shape[1]
    if route == "auto":
        gram_cheaper = total_rank * (out_features + in_features) < out_features * in_features
        route = "gram" if gram_cheaper else "dense"
    P, Q = P.double(), Q.double()
    if route == "dense":
        return float((P @ Q).square().sum())
    return float((P.T @ P).mul_(Q @ Q.T).sum())
