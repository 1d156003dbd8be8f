"""HetLoRA (Cho et al. 2024): zero padding with Frobenius-norm weights, plus rank self-pruning."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from fedlora.aggregation.base import Aggregator, Regularizer, weighted_zero_padded_mean
from fedlora.aggregation.weights import Weighting
from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors, LoraFactors
from fedlora.lora.settings import LoraSettings
from fedlora.lora.update import ClientUpdate


class HetLoRA(Aggregator):
    """Zero padding weighted by ``||s_k B_k A_k||_F / sum_j ||s_j B_j A_j||_F``, per module.

    Clients whose update is larger (less sparse) count more.  The client weights (data size) do
    not enter; dense tensors are still averaged with them.  If every update of a module is zero
    the data-size weights are used.  Clients add HetLoRA's rank self-pruning regulariser
    (:func:`self_pruning_penalty`) to their loss and, with ``prune_tol > 0``, prune the slots it
    emptied (:func:`pruned_rank`): they send, and are served from then on, the smaller rank.

    Options
    -------
    gamma : share of each client's rank kept (γ): the regulariser pushes the trailing
        ``r - floor(gamma * r)`` slots towards zero, and pruning drops them.
    lam : weight of the regulariser (λ); 0 switches it off.
    prune_tol : a client drops its trailing slots of a module when their share of the module's
        update norm is below ``prune_tol`` (see :func:`pruned_rank`); 0 (the default) never
        prunes, as the pruning trigger is our reading of the paper.
    """

    name = "hetlora"

    def __init__(
        self,
        *,
        weighting: Weighting = "num_examples",
        gamma: float = 0.99,
        lam: float = 1e-3,
        prune_tol: float = 0.0,
    ) -> None:
        super().__init__(weighting=weighting)
        _check_penalty(gamma, lam)
        if not 0.0 <= prune_tol < math.inf:
            raise FedloraError(f"hetlora prune_tol must be a non-negative number, got {prune_tol}")
        self.gamma = gamma
        self.lam = lam
        self.prune_tol = prune_tol

    def client_regularizer(self) -> Regularizer | None:
        if self.lam == 0.0:
            return None
        return partial(self_pruning_penalty, gamma=self.gamma, lam=self.lam)

    @property
    def prunes_ranks(self) -> bool:
        return self.prune_tol > 0.0

    def prune(self, update: ClientUpdate) -> ClientUpdate:
        """Every module of ``update`` cut to its :func:`pruned_rank`."""
        if not self.prunes_ranks:
            return update
        modules = {
            name: keep_slots(factors, pruned_rank(factors, self.gamma, self.prune_tol))
            for name, factors in update.modules.items()
        }
        return replace(update, modules=modules)

    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        return weighted_zero_padded_mean(factors, norm_weights(factors, fallback=weights))


def update_norm(factors: FoldedFactors) -> Tensor:
    """``||B @ A||_F`` without forming the ``out x in`` product: ``sqrt(<B^T B, A A^T>)``."""
    # In float64: the Gram products square the values, which overflows float32 from about 1e19.
    A, B = factors.A.double(), factors.B.double()
    gram = (B.T @ B) * (A @ A.T)
    return gram.sum().clamp_min(0.0).sqrt()


def norm_weights(factors: Sequence[FoldedFactors], fallback: Tensor) -> Tensor:
    """HetLoRA's weights: update norms normalised to sum to 1 (``fallback`` if all are zero)."""
    norms = torch.stack([update_norm(f) for f in factors]).to(fallback.dtype)
    total = norms.sum()
    return fallback if total <= 0 else norms / total


def self_pruning_penalty(
    factor_pairs: Iterable[tuple[Tensor, Tensor]], *, gamma: float, lam: float
) -> Tensor:
    """HetLoRA's rank self-pruning regulariser, to add to a client's training loss.

    For each module with ``A (r x in)`` and ``B (out x r)`` it adds
    ``lam * ||B[:, k:]||_F * ||A[k:, :]||_F`` with ``k = floor(gamma * r)`` (so the default
    ``gamma = 0.99`` penalises the last slot of any rank below 100): it pushes the trailing
    ``(1 - gamma)`` share of the rank towards zero so that the client can prune it.  Unlike the
    reference implementation it is computed on the live parameters, so gradients flow.
    """
    _check_penalty(gamma, lam)
    total: Tensor | None = None
    for A, B in factor_pairs:
        keep = math.floor(gamma * A.shape[0])
        term = torch.linalg.matrix_norm(B[:, keep:]) * torch.linalg.matrix_norm(A[keep:, :])
        total = term if total is None else total + term
    if total is None:
        raise FedloraError("hetlora self-pruning penalty needs at least one LoRA module")
    return lam * total


def pruned_rank(factors: LoraFactors, gamma: float, tol: float) -> int:
    """The rank a client keeps of one trained module: HetLoRA's rank self-pruning, as we read it.

    With ``k = max(1, floor(gamma * r))`` the client keeps only its first ``k`` slots when the
    trailing ones carry less than ``tol`` of the module's update,
    ``||B[:, k:] A[k:, :]||_F < tol * ||B A||_F``, and all ``r`` otherwise.  The paper prunes to
    about ``gamma * r`` once the regularised trailing norm is small but does not state the
    trigger (UNCONFIRMED); this is the same split into kept and trailing slots as
    :func:`self_pruning_penalty`, one step per round, never below rank 1.  The inequality is
    strict, so ``tol = 0`` and an all-zero update never prune.
    """
    keep = max(1, math.floor(gamma * factors.r))
    if keep >= factors.r:
        return factors.r
    A, B = factors.A, factors.B
    trailing = update_norm(FoldedFactors(A=A[keep:], B=B[:, keep:]))
    return keep if trailing < tol * update_norm(FoldedFactors(A=A, B=B)) else factors.r


def keep_slots(factors: LoraFactors, rank: int) -> LoraFactors:
    """The first ``rank`` slots with their effective update unchanged.

    The scale ``alpha / r`` grows when ``r`` shrinks, so ``B`` is rescaled to the new rank's
    scale: the kept slots contribute exactly what they did before the trailing ones were dropped.
    """
    if rank == factors.r:
        return factors
    folded = factors.folded()
    kept = FoldedFactors(A=folded.A[:rank], B=folded.B[:, :rank])
    return kept.unfold(rank, LoraSettings(factors.alpha, factors.use_rslora))


def _check_penalty(gamma: float, lam: float) -> None:
    if not 0.0 < gamma <= 1.0:
        raise FedloraError(f"hetlora gamma must be in (0, 1], got {gamma}")
    if not lam >= 0.0:
        raise FedloraError(f"hetlora lam must be non-negative, got {lam}")
