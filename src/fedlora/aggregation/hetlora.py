"""HetLoRA (Cho et al. 2024): zero padding with Frobenius-norm weights, plus rank self-pruning."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import partial

import torch
from torch import Tensor

from fedlora.aggregation.base import Aggregator, Regularizer, weighted_zero_padded_mean
from fedlora.aggregation.weights import Weighting
from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors


class HetLoRA(Aggregator):
    """Zero padding weighted by ``||s_k B_k A_k||_F / sum_j ||s_j B_j A_j||_F``, per module.

    Clients whose update is larger (less sparse) count more.  The client weights (data size) do
    not enter; dense tensors are still averaged with them.  If every update of a module is zero
    the data-size weights are used.  Clients add HetLoRA's rank self-pruning regulariser
    (:func:`self_pruning_penalty`) to their loss.

    Options
    -------
    gamma : share of each client's rank the regulariser leaves alone (γ; the trailing
        ``r - floor(gamma * r)`` slots are pushed towards zero).
    lam : weight of the regulariser (λ); 0 switches it off.
    """

    name = "hetlora"

    def __init__(
        self, *, weighting: Weighting = "num_examples", gamma: float = 0.99, lam: float = 1e-3
    ) -> None:
        super().__init__(weighting=weighting)
        _check_penalty(gamma, lam)
        self.gamma = gamma
        self.lam = lam

    def client_regularizer(self) -> Regularizer | None:
        if self.lam == 0.0:
            return None
        return partial(self_pruning_penalty, gamma=self.gamma, lam=self.lam)

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
    gram = (factors.B.T @ factors.B) * (factors.A @ factors.A.T)
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


def _check_penalty(gamma: float, lam: float) -> None:
    if not 0.0 < gamma <= 1.0:
        raise FedloraError(f"hetlora gamma must be in (0, 1], got {gamma}")
    if not lam >= 0.0:
        raise FedloraError(f"hetlora lam must be non-negative, got {lam}")
