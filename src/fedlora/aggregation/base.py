"""The aggregator contract: validated client updates in, a new :class:`GlobalState` out."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedlora.aggregation.state import GlobalState
from fedlora.aggregation.validation import RoundLayout, validate_round
from fedlora.aggregation.weights import Weighting, client_weights
from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors
from fedlora.lora.update import ClientUpdate

LINALG_ERROR: type[Exception] = torch.linalg.LinAlgError  # type: ignore[attr-defined]

Regularizer = Callable[[Sequence[tuple[Tensor, Tensor]]], Tensor]
"""A client-side loss term from the live ``(A, B)`` parameters of every adapted module."""


class Aggregator(ABC):
    """Combines one round of rank-heterogeneous client updates into a new global state.

    Subclasses implement :meth:`combine` for one module on scale-folded factors.  Aggregation is
    functional: ``previous`` is never modified, and invalid updates raise before any work.

    The method's needs are hooks, so that runners never ask which method is in use:
    ``trains_A`` (False: clients freeze ``A``, as in FFA-LoRA), ``merges_into_base`` (True: the
    round's update is merged into the base weights and clients restart from fresh LoRA, as FLoRA),
    :meth:`client_regularizer` (a term a client adds to its training loss, as HetLoRA),
    :meth:`configure_federation` (the largest rank any client of the federation may train) and
    :meth:`prune` with :attr:`prunes_ranks` (a client sends, and keeps, fewer slots than it was
    served: HetLoRA's rank self-pruning).
    """

    name: ClassVar[str]
    trains_A: ClassVar[bool] = True
    merges_into_base: ClassVar[bool] = False

    def __init__(self, *, weighting: Weighting = "num_examples") -> None:
        self.weighting: Weighting = weighting

    def configure_federation(self, max_rank: int) -> None:  # noqa: B027 (an optional hook)
        """Learn the largest rank any client of the federation may train, before round 1."""

    def check_tiers(self, tiers: Sequence[Any]) -> None:  # noqa: B027 (an optional hook)
        """Refuse, before the run, rank tiers this method cannot aggregate (FedIT: mixed)."""

    def client_regularizer(self) -> Regularizer | None:
        """A term every client adds to its local loss (``None``: plain training)."""
        return None

    @property
    def prunes_ranks(self) -> bool:
        """Whether a client may send fewer slots of a module than it was served.

        The server then accepts the smaller rank and serves the client that rank from then on;
        a larger rank is never accepted.
        """
        return False

    def prune(self, update: ClientUpdate) -> ClientUpdate:
        """What a client sends of its trained ``update``: all of it, unless the method prunes.

        Runs on the client after local training; a method with :attr:`prunes_ranks` may return
        fewer slots per module (at least one), whose rank the client keeps.
        """
        return update

    def round_report(self) -> dict[str, Any]:
        """What the method measured in its last :meth:`aggregate` call, for the round's metrics
        (FlexLoRA: the energy each rank's truncation keeps, when asked for)."""
        return {}

    def validate_update(self, update: ClientUpdate, previous: GlobalState) -> None:
        """All checks of one update against the state it was served from (raise on a bad one)."""
        validate_round([update], previous)
        self.check_update(update, previous)

    def aggregate(
        self,
        updates: Sequence[ClientUpdate],
        previous: GlobalState,
        *,
        validated: bool = False,
        into: MutableMapping[str, FoldedFactors] | None = None,
    ) -> GlobalState:
        """Aggregate one round; the result's ``round`` is ``previous.round + 1``.

        ``validated=True`` says every update already passed :meth:`validate_update`; only the
        round-level checks (no update twice, one layout) are repeated.  ``into`` receives each
        module of the new state as it is combined (default: a dict); a mapping that writes them
        to disk (:class:`fedlora.runs.spill.FactorFiles`) keeps a state larger than memory out
        of it.
        """
        layout = validate_round(updates, previous, contents=not validated)
        if not validated:
            for update in updates:
                self.check_update(update, previous)
        weights = client_weights(updates, self.weighting)
        combined: MutableMapping[str, FoldedFactors] = {} if into is None else into
        for name in layout.module_shapes:
            combined[name] = self._combine_module(name, updates, weights, previous)
        dense = {
            name: _dense_mean([u.dense[name] for u in updates], weights)
            for name in layout.dense_shapes
        }
        _check_finite_dense(dense)
        if self.merges_into_base:
            fresh = {
                n: FoldedFactors.empty(f.out_features, f.in_features, f.A.dtype)
                for n, f in combined.items()
            }
            return GlobalState(
                modules=fresh,
                dense=dense,
                round=previous.round + 1,
                seed=previous.seed,
                merge_into_base=combined,
            )
        return GlobalState(
            modules=combined, dense=dense, round=previous.round + 1, seed=previous.seed
        )

    def _combine_module(
        self,
        name: str,
        updates: Sequence[ClientUpdate],
        weights: Tensor,
        previous: GlobalState,
    ) -> FoldedFactors:
        """One module of the round: only its factors are read (an update spilled to disk reads
        them here) and they are freed on return, so one module of every client is in memory.

        The module is computed in float32, or the widest precision a client sent it in
        (half-precision uploads are aggregated in float32, float64 ones in float64).
        """
        factors = [u.modules[name] for u in updates]
        dtype = functools.reduce(
            torch.promote_types, (t.dtype for f in factors for t in (f.A, f.B)), torch.float32
        )
        folded = [f.folded(dtype) for f in factors]
        del factors  # the unfolded B of every client
        prior = previous.modules.get(name)
        try:
            result = self.combine(
                name, folded, weights.to(dtype), None if prior is None else _as_dtype(prior, dtype)
            )
        except LINALG_ERROR as error:  # e.g. an SVD of values near overflow
            raise FedloraError(f"module {name!r}: {error}") from None
        if not (bool(torch.isfinite(result.A).all()) and bool(torch.isfinite(result.B).all())):
            # Finite updates can still sum past the float range: such a round must not become
            # the global state (the caller keeps the previous one).
            raise FedloraError(
                f"module {name!r}: the aggregate is not finite (an update too large?)"
            )
        return result

    def check_update(self, update: ClientUpdate, previous: GlobalState) -> None:  # noqa: B027
        """Method-specific checks of one validated update (raise ``InvalidUpdateError``).

        Most methods accept any validated update; FFA-LoRA checks that ``A`` stayed frozen.
        """

    @abstractmethod
    def combine(
        self,
        module: str,
        factors: Sequence[FoldedFactors],
        weights: Tensor,
        previous: FoldedFactors | None,
    ) -> FoldedFactors:
        """Combine the round's folded factors of one module (``weights`` sum to 1)."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()))
        return f"{type(self).__name__}({options})"


def pad_factors(factors: FoldedFactors, rank: int) -> FoldedFactors:
    """Zero-pad ``A`` with rows and ``B`` with columns up to ``rank`` slots."""
    missing = rank - factors.rank
    if missing <= 0:
        return factors
    A = torch.cat([factors.A, factors.A.new_zeros(missing, factors.in_features)])
    B = torch.cat([factors.B, factors.B.new_zeros(factors.out_features, missing)], dim=1)
    return FoldedFactors(A=A, B=B)


def weighted_zero_padded_mean(factors: Sequence[FoldedFactors], weights: Tensor) -> FoldedFactors:
    """``sum_k w_k pad0(A_k)`` and ``sum_k w_k pad0(B_k)`` at the round's largest rank."""
    rank = max(f.rank for f in factors)
    padded = [pad_factors(f, rank) for f in factors]
    return FoldedFactors(
        A=weighted_sum([f.A for f in padded], weights),
        B=weighted_sum([f.B for f in padded], weights),
    )


def weighted_sum(tensors: Sequence[Tensor], weights: Tensor) -> Tensor:
    total = tensors[0] * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
        total = total + tensor * weight
    return total


def _dense_mean(tensors: Sequence[Tensor], weights: Tensor) -> Tensor:
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    return weighted_sum([t.to(dtype) for t in tensors], weights.to(dtype))


def _check_finite_dense(dense: Mapping[str, Tensor]) -> None:
    for name, tensor in dense.items():
        if not bool(torch.isfinite(tensor).all()):
            raise FedloraError(
                f"dense {name!r}: the aggregate is not finite (an update too large?)"
            )


def _as_dtype(factors: FoldedFactors, dtype: torch.dtype) -> FoldedFactors:
    if factors.A.dtype == dtype and factors.B.dtype == dtype:
        return factors
    return FoldedFactors(A=factors.A.to(dtype), B=factors.B.to(dtype))


__all__ = [
    "Aggregator",
    "Regularizer",
    "RoundLayout",
    "pad_factors",
    "weighted_sum",
    "weighted_zero_padded_mean",
]
