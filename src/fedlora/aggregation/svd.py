"""Top singular triplets of a sum of low-rank products ``P @ Q`` without, if cheaper, forming it.

FlexLoRA needs the SVD of ``dW = sum_k p_k B_k A_k = P @ Q`` with ``P = [p_1 B_1 ... p_K B_K]``
(``out x R``) and ``Q = [A_1; ...; A_K]`` (``R x in``).  With reduced QRs ``P = Q_P R_P`` and
``Q^T = Q_Q R_Q``, ``dW = Q_P (R_P R_Q^T) Q_Q^T``, so the SVD of the small core
``R_P R_Q^T = U_c S V_c^T`` gives ``dW = (Q_P U_c) S (Q_Q V_c)^T`` exactly, in
``O((out + in) R^2)`` instead of the ``O(out * in * min(out, in))`` of a dense SVD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fedlora.lora.factors import FoldedFactors

SvdMethod = Literal["auto", "dense", "factored"]
SVD_METHODS: tuple[SvdMethod, ...] = ("auto", "dense", "factored")


@dataclass(frozen=True)
class TruncatedSVD:
    """``U (out x k)``, ``S (k,)`` descending, ``Vh (k x in)``."""

    U: Tensor
    S: Tensor
    Vh: Tensor


def dense_cost(out_features: int, in_features: int, total_rank: int) -> float:
    """Rough flop count of forming ``P @ Q`` and a reduced dense SVD of it."""
    m, n = max(out_features, in_features), min(out_features, in_features)
    return 2.0 * out_features * in_features * total_rank + 4.0 * m * n * n + 8.0 * n**3


def factored_cost(out_features: int, in_features: int, total_rank: int) -> float:
    """Rough flop count of two reduced QRs, the core SVD and the back-projection."""
    r_out, r_in = min(out_features, total_rank), min(in_features, total_rank)
    qr = 4.0 * (out_features * total_rank * r_out + in_features * total_rank * r_in)
    core = 2.0 * r_out * total_rank * r_in + 4.0 * max(r_out, r_in) * min(r_out, r_in) ** 2
    back = 2.0 * (out_features + in_features) * r_out * r_in
    return qr + core + back


def choose_method(
    out_features: int, in_features: int, total_rank: int
) -> Literal["dense", "factored"]:
    """The cheaper of the two exact paths for this shape."""
    dense = dense_cost(out_features, in_features, total_rank)
    factored = factored_cost(out_features, in_features, total_rank)
    return "factored" if factored <= dense else "dense"


def top_svd_of_product(P: Tensor, Q: Tensor, k: int, method: SvdMethod = "auto") -> TruncatedSVD:
    """The top ``k`` singular triplets of ``P @ Q`` (fewer if its inner dimension is smaller)."""
    if _resolve(method, P.shape[0], Q.shape[1], P.shape[1]) == "dense":
        return _dense_svd(P @ Q, k)
    return _factored_svd(P, Q, k)


def top_svd_of_sum(
    factors: Sequence[FoldedFactors], weights: Tensor, k: int, method: SvdMethod = "auto"
) -> TruncatedSVD:
    """The top ``k`` singular triplets of ``sum_k w_k B_k @ A_k``, one layer in memory at a time.

    The dense path accumulates the ``out x in`` sum in place; the factored path writes the
    weighted ``B`` blocks and the ``A`` blocks straight into one preallocated ``P`` and ``Q``.
    """
    out_features, in_features = factors[0].out_features, factors[0].in_features
    total = sum(f.rank for f in factors)
    if _resolve(method, out_features, in_features, total) == "dense":
        dense = factors[0].B.new_zeros(out_features, in_features)
        for f, w in zip(factors, weights, strict=True):
            dense.addmm_(f.B, f.A, alpha=float(w))
        return _dense_svd(dense, k)
    P = factors[0].B.new_empty(out_features, total)
    Q = factors[0].A.new_empty(total, in_features)
    offset = 0
    for f, w in zip(factors, weights, strict=True):
        torch.mul(f.B, w, out=P[:, offset : offset + f.rank])
        Q[offset : offset + f.rank].copy_(f.A)
        offset += f.rank
    return _factored_svd(P, Q, k)


def noise_floor(factors: Sequence[FoldedFactors], weights: Tensor) -> float:
    """Singular values of ``sum_k w_k B_k @ A_k`` at or below this are rounding noise.

    ``max(out, in) * eps`` times ``sum_k |w_k| ||B_k||_F ||A_k||_F``, a bound of the sum's norm
    that stays at the inputs' scale when clients cancel out (where the sum's own largest
    singular value would itself be noise), and does not change when a client rescales ``A``
    against ``B``.
    """
    eps = torch.finfo(factors[0].A.dtype).eps
    size = max(factors[0].out_features, factors[0].in_features)
    scale = sum(
        abs(float(w)) * float(torch.linalg.matrix_norm(f.B) * torch.linalg.matrix_norm(f.A))
        for f, w in zip(factors, weights, strict=True)
    )
    return eps * size * scale


def _resolve(method: SvdMethod, out_features: int, in_features: int, total_rank: int) -> str:
    if method == "auto":
        return choose_method(out_features, in_features, total_rank)
    if method not in SVD_METHODS:
        raise ValueError(f"unknown SVD method {method!r}; choose one of {', '.join(SVD_METHODS)}")
    return method


def _dense_svd(matrix: Tensor, k: int) -> TruncatedSVD:
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    return TruncatedSVD(U=U[:, :k], S=S[:k], Vh=Vh[:k])


def _factored_svd(P: Tensor, Q: Tensor, k: int) -> TruncatedSVD:
    Q_P, R_P = torch.linalg.qr(P)
    Q_Q, R_Q = torch.linalg.qr(Q.T)
    U_c, S, Vh_c = torch.linalg.svd(R_P @ R_Q.T, full_matrices=False)
    # Only the top k vectors are ever used: project back just those.
    return TruncatedSVD(U=Q_P @ U_c[:, :k], S=S[:k], Vh=Vh_c[:k] @ Q_Q.T)
