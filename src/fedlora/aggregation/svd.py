"""Top singular triplets of a sum of low-rank products ``P @ Q`` without, if cheaper, forming it.

FlexLoRA needs the top ``k`` singular triplets of ``dW = sum_k p_k B_k A_k = P @ Q`` with
``P = [p_1 B_1 ... p_K B_K]`` (``out x R``) and ``Q = [A_1; ...; A_K]`` (``R x in``).  Three exact
paths (exact in exact arithmetic; none samples or truncates an iteration):

- ``dense``: form ``dW`` and take its full SVD, ``O(out * in * min(out, in))``; the reference.
- ``factored``: reduced QRs ``P = Q_P R_P`` and ``Q^T = Q_Q R_Q`` give
  ``dW = Q_P (R_P R_Q^T) Q_Q^T``, and the full SVD of the ``R x R`` core gives every triplet,
  ``O((out + in) R^2 + R^3)``.  Backward stable, but the core SVD dominates once ``R`` is in the
  thousands.
- ``gram``: only the top ``k`` of the core, from its square.  With ``m >= n`` the larger and
  smaller of ``out`` and ``in`` (else the transposed problem), ``Q^T = Q_Q R_Q`` and
  ``Z = P R_Q^T`` (``m x R``), ``dW = Z Q_Q^T`` has the singular values and left vectors of
  ``Z``, and ``Z^T Z = R_Q (P^T P) R_Q^T`` costs a Gram matrix (half a matrix product) and a
  congruence, not a QR of the large side.  A partial symmetric eigensolver gives its top ``k``
  eigenvectors ``Y``; ``Z Y`` spans dW's top-``k`` left singular subspace, and the SVD of ``dW``
  projected on it (a Rayleigh-Ritz step, with ``P`` and ``Q`` themselves, never their squares)
  gives the triplets.  The core holds ``s_i^2``: its rounding, about ``eps s_1^2``, is what limits
  this path.  A few extra eigenvectors give the projection room; when a wanted eigenvalue is
  within ``100 eps`` of the largest (``s_k < 3e-3 s_1`` in float32) the core's eigenvectors are
  computed in float64; when the clients' factors cancel so much that ``||P|| ||Q||`` exceeds ``s_1``
  ~41-fold (float32) the rounding grows with its square and the path hands over to ``factored``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import scipy.linalg
import torch
from torch import Tensor

from fedlora.lora.factors import FoldedFactors

SvdMethod = Literal["auto", "dense", "factored", "gram"]
SVD_METHODS: tuple[SvdMethod, ...] = ("auto", "dense", "factored", "gram")
ExactPath = Literal["dense", "factored", "gram"]
# The Gram matrix is computed by column blocks, upper triangle only: (1 + 1 / 16) / 2 of a product.
_GRAM_BLOCKS = 16
# The squared core's rounding is about eps * rho^2 * s_1^2 with rho = ||P|| ||Q|| / s_1 (how much
# the clients' factors cancel; 1-2 in the benchmark's rounds).  Above this (rho > 41 in float32)
# the projection no longer recovers what the core buries, and the ``gram`` path hands over to
# the backward-stable ``factored`` one.
_MAX_SQUARED_ROUNDING = 1e-4
# A wanted eigenvalue of the core below this many eps times the largest (s_k < 3e-3 s_1 in
# float32) carries more than 1 % rounding: the core's eigenvectors are then computed in float64.
_RESOLVED = 100.0


def _oversampled(k: int) -> int:
    """Eigenvectors of the core to project on: the extra ones catch directions it mixed up."""
    return k + max(8, k // 4)


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


def gram_cost(out_features: int, in_features: int, total_rank: int, k: int) -> float:
    """Rough flop count of the QR, the Gram matrix and core, the eigensolver and the projection."""
    m, n = max(out_features, in_features), min(out_features, in_features)
    r = min(n, total_rank)
    width = min(r, _oversampled(k))
    qr = 2.0 * n * total_rank * r - 2.0 / 3.0 * r**3
    if r == total_rank:
        core = float(m * total_rank**2 + total_rank**3)
    else:
        core = 2.0 * m * total_rank * r + m * r**2
    eigensolver = 4.0 / 3.0 * r**3
    projection = (4.0 * m + 2.0 * n) * total_rank * width + 2.0 * m * width**2
    return qr + core + eigensolver + projection


def choose_method(
    out_features: int, in_features: int, total_rank: int, k: int | None = None
) -> ExactPath:
    """The cheapest exact path for this shape and ``k`` triplets (all of them if ``None``)."""
    top = min(out_features, in_features, total_rank) if k is None else k
    costs: dict[ExactPath, float] = {
        "gram": gram_cost(out_features, in_features, total_rank, top),
        "factored": factored_cost(out_features, in_features, total_rank),
        "dense": dense_cost(out_features, in_features, total_rank),
    }
    return min(costs, key=costs.__getitem__)


def top_svd_of_product(P: Tensor, Q: Tensor, k: int, method: SvdMethod = "auto") -> TruncatedSVD:
    """The top ``k`` singular triplets of ``P @ Q`` (fewer if its inner dimension is smaller)."""
    path = _resolve(method, P.shape[0], Q.shape[1], P.shape[1], k)
    if path == "dense":
        return _dense_svd(P @ Q, k)
    return _gram_svd(P, Q, k) if path == "gram" else _factored_svd(P, Q, k)


def top_svd_of_sum(
    factors: Sequence[FoldedFactors], weights: Tensor, k: int, method: SvdMethod = "auto"
) -> TruncatedSVD:
    """The top ``k`` singular triplets of ``sum_k w_k B_k @ A_k``, one layer in memory at a time.

    The dense path accumulates the ``out x in`` sum in place; the others write the weighted ``B``
    blocks and the ``A`` blocks straight into one preallocated ``P`` and ``Q``.
    """
    out_features, in_features = factors[0].out_features, factors[0].in_features
    total = sum(f.rank for f in factors)
    path = _resolve(method, out_features, in_features, total, k)
    if path == "dense":
        dense = factors[0].B.new_zeros(out_features, in_features)
        for f, w in zip(factors, weights, strict=True):
            dense.addmm_(f.B, f.A, alpha=float(w))
        return _dense_svd(dense, k)
    P, Q = stacked(factors, weights)
    return _gram_svd(P, Q, k) if path == "gram" else _factored_svd(P, Q, k)


def stacked(factors: Sequence[FoldedFactors], weights: Tensor) -> tuple[Tensor, Tensor]:
    """``P = [w_1 B_1 ... w_K B_K]`` and ``Q = [A_1; ...; A_K]``, so that ``P @ Q`` is the sum."""
    total = sum(f.rank for f in factors)
    P = factors[0].B.new_empty(factors[0].out_features, total)
    Q = factors[0].A.new_empty(total, factors[0].in_features)
    offset = 0
    for f, w in zip(factors, weights, strict=True):
        torch.mul(f.B, w, out=P[:, offset : offset + f.rank])
        Q[offset : offset + f.rank].copy_(f.A)
        offset += f.rank
    return P, Q


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


def _resolve(
    method: SvdMethod, out_features: int, in_features: int, total_rank: int, k: int
) -> str:
    if method == "auto":
        return choose_method(out_features, in_features, total_rank, k)
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


def _gram_svd(P: Tensor, Q: Tensor, k: int) -> TruncatedSVD:
    """The ``gram`` path (module docstring): QR of the smaller side, Gram matrix of the larger."""
    if P.shape[0] < Q.shape[1]:
        transposed = _gram_svd(Q.T, P.T, k)
        return TruncatedSVD(U=transposed.Vh.T, S=transposed.S, Vh=transposed.U.T)
    k = min(k, *P.shape, Q.shape[1])
    reflectors, _ = torch.geqrf(Q.T)  # R_Q above the diagonal, Householder vectors below
    R_Q = reflectors[: min(reflectors.shape)].triu()  # min(n, R) x R
    # The core Z^T Z (Z = P R_Q^T) is R_Q (P^T P) R_Q^T, or, when R > n, the Gram of Z (m x n).
    square = R_Q.shape[0] == R_Q.shape[1]
    gram = _upper_gram(P if square else P @ R_Q.T)
    factor = R_Q if square else None
    width = min(_oversampled(k), gram.shape[0])
    values, Y = _top_eigenpairs(gram, factor, width)
    eps, largest = torch.finfo(P.dtype).eps, float(values[-1])
    if eps * (_norm_estimate(P) * _norm_estimate(R_Q)) ** 2 > _MAX_SQUARED_ROUNDING * largest:
        return _factored_svd(P, Q, k)
    if P.dtype != torch.float64 and float(values[-k]) < _RESOLVED * eps * largest:
        factor = None if factor is None else factor.double()
        _, Y = _top_eigenpairs(gram.double(), factor, width)
    basis, _ = torch.linalg.qr(P @ (R_Q.T @ Y.to(P.dtype)))
    U_b, S, Vh = torch.linalg.svd((basis.T @ P) @ Q, full_matrices=False)
    return TruncatedSVD(U=basis @ U_b[:, :k], S=S[:k], Vh=Vh[:k])


def _norm_estimate(X: Tensor, steps: int = 8) -> float:
    """``||X||_2``, slightly from below, by power iteration from a fixed random start."""
    generator = torch.Generator(device=X.device).manual_seed(0)
    v = torch.randn(X.shape[1], generator=generator, dtype=X.dtype, device=X.device)
    for _ in range(steps):
        v = torch.nn.functional.normalize(X.T @ (X @ v), dim=0)
    return float(torch.linalg.vector_norm(X @ v))


def _upper_gram(X: Tensor) -> Tensor:
    """The upper triangle of ``X^T X`` (zeros below), by column blocks: torch has no ``syrk``."""
    R = X.shape[1]
    gram = X.new_zeros(R, R)
    edges = [round(i * R / _GRAM_BLOCKS) for i in range(_GRAM_BLOCKS + 1)]
    for start, stop in itertools.pairwise(edges):
        gram[start:stop, start:] = X[:, start:stop].T @ X[:, start:]
    return gram


def _top_eigenpairs(gram: Tensor, factor: Tensor | None, width: int) -> tuple[Tensor, Tensor]:
    """The ``width`` largest eigenpairs (ascending) of ``F A F^T``, ``A`` by its upper triangle.

    ``F`` is upper triangular (``None``: the identity).  LAPACK's ``sygst`` (itype 3) forms the
    congruence in ``n^3`` flops where two matrix products take ``4 n^3``; the MRRR driver of
    ``syevr`` then reduces to tridiagonal form and computes only the wanted eigenvectors, which
    ``torch.linalg.eigh`` (all of them) cannot.  A C-ordered upper triangle is a Fortran-ordered
    lower one, hence ``lower`` on the transposed views.
    """
    a = gram.detach().cpu().numpy().T
    if factor is not None:
        (sygst,) = scipy.linalg.get_lapack_funcs(("sygst",), (a,))
        a, info = sygst(a, factor.detach().cpu().numpy().T, itype=3, lower=1)
        if info != 0:
            raise RuntimeError(f"LAPACK sygst failed with info={info}")
    n = a.shape[0]
    values, vectors = scipy.linalg.eigh(
        a,
        lower=True,
        subset_by_index=(n - width, n - 1),
        driver="evr",
        overwrite_a=factor is not None,
        check_finite=False,
    )
    return torch.from_numpy(values), torch.from_numpy(vectors).to(gram.device)
