"""Checks a round's client updates before any aggregation touches them.

Every problem raises :class:`~fedlora.errors.InvalidUpdateError` naming the client and module,
before the aggregator computes anything, so the previous global state is never half-updated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedlora.aggregation.state import GlobalState
from fedlora.errors import EmptyRoundError, InvalidUpdateError
from fedlora.lora.factors import LoraFactors
from fedlora.lora.update import ClientUpdate

MAX_EXAMPLES = 2**53
"""The largest data size a client may claim: beyond it a float64 weight is no longer exact."""


@dataclass(frozen=True)
class RoundLayout:
    """What every update of a round must match: module shapes ``(out, in)`` and dense shapes."""

    module_shapes: Mapping[str, tuple[int, int]]
    dense_shapes: Mapping[str, tuple[int, ...]]

    @classmethod
    def of_state(cls, state: GlobalState) -> RoundLayout:
        return cls(
            module_shapes={n: (f.out_features, f.in_features) for n, f in state.modules.items()},
            dense_shapes={n: tuple(t.shape) for n, t in state.dense.items()},
        )

    @classmethod
    def of_update(cls, update: ClientUpdate) -> RoundLayout:
        return cls(
            module_shapes={
                n: (int(f.B.shape[0]), int(f.A.shape[-1])) for n, f in update.modules.items()
            },
            dense_shapes={n: tuple(t.shape) for n, t in update.dense.items()},
        )


def validate_round(
    updates: Sequence[ClientUpdate], previous: GlobalState | None, *, contents: bool = True
) -> RoundLayout:
    """Check every update; return the layout they share (the previous state's, if it has one).

    ``contents=False`` is for updates that a runner has already checked one by one against
    ``previous`` as they arrived: only what spans the round is checked (no client twice; one
    layout when ``previous`` has none), so no factor is read (an update spilled to disk stays
    there until it is aggregated).
    """
    if not updates:
        raise EmptyRoundError("cannot aggregate a round with no client updates")
    if previous is not None and previous.modules:
        layout, from_state = RoundLayout.of_state(previous), True
    else:
        layout, from_state = RoundLayout.of_update(updates[0]), False
    seen: set[int] = set()
    for update in updates:
        if update.client_id in seen:
            raise InvalidUpdateError("appears twice in the same round", client_id=update.client_id)
        seen.add(update.client_id)
        if contents or not from_state:
            _check_update(update, layout, contents)
    return layout


def _check_update(update: ClientUpdate, layout: RoundLayout, contents: bool) -> None:
    cid = update.client_id
    if isinstance(update.num_examples, bool) or not isinstance(update.num_examples, int):
        raise InvalidUpdateError(
            f"num_examples must be an int, got {type(update.num_examples).__name__}", client_id=cid
        )
    if not 0 < update.num_examples <= MAX_EXAMPLES:
        raise InvalidUpdateError(
            f"num_examples must be in 1..2^53, got {_short(update.num_examples)}", client_id=cid
        )
    _check_names(set(update.modules), set(layout.module_shapes), "LoRA module", cid)
    _check_names(set(update.dense), set(layout.dense_shapes), "dense tensor", cid)
    for name, factors in update.modules.items():
        _check_factors(factors, layout.module_shapes[name], cid, name, contents)
    for name, tensor in update.dense.items():
        expected = layout.dense_shapes[name]
        if tuple(tensor.shape) != expected:
            raise InvalidUpdateError(
                f"dense tensor has shape {tuple(tensor.shape)}, expected {expected}",
                client_id=cid,
                module=name,
            )
        if contents:
            _check_finite(tensor, "dense tensor", cid, name)


def _short(number: int) -> str:
    text = str(number)
    return text if len(text) <= 20 else f"a {len(text)}-digit number"


def _check_names(got: set[str], expected: set[str], what: str, cid: int) -> None:
    missing, extra = sorted(expected - got), sorted(got - expected)
    if missing:
        raise InvalidUpdateError(
            f"{what} is missing from the update", client_id=cid, module=missing[0]
        )
    if extra:
        raise InvalidUpdateError(
            f"unexpected {what} (not in the global adapter)", client_id=cid, module=extra[0]
        )


def _check_factors(
    factors: LoraFactors, shape: tuple[int, int], cid: int, name: str, contents: bool
) -> None:
    out_features, in_features = shape
    A, B, r = factors.A, factors.B, factors.r

    def fail(problem: str) -> InvalidUpdateError:
        return InvalidUpdateError(problem, client_id=cid, module=name)

    if A.ndim != 2 or B.ndim != 2:
        raise fail(f"A and B must be matrices, got A{tuple(A.shape)} and B{tuple(B.shape)}")
    if not (A.is_floating_point() and B.is_floating_point()):
        raise fail(f"A and B must be floating point, got {A.dtype} and {B.dtype}")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise fail(f"declared rank must be a positive int, got {r!r}")
    if r > min(out_features, in_features):
        raise fail(
            f"rank {r} exceeds min(out, in) = {min(out_features, in_features)} of the "
            f"{out_features} x {in_features} layer"
        )
    if tuple(A.shape) != (r, in_features) or tuple(B.shape) != (out_features, r):
        raise fail(
            f"declared rank {r} on a {out_features} x {in_features} layer needs A{(r, in_features)}"
            f" and B{(out_features, r)}, got A{tuple(A.shape)} and B{tuple(B.shape)}"
        )
    if not math.isfinite(factors.alpha) or factors.alpha <= 0:
        raise fail(f"lora alpha must be a positive finite number, got {factors.alpha!r}")
    if contents:
        _check_finite(A, "A", cid, name)
        _check_finite(B, "B", cid, name)


def _check_finite(tensor: Tensor, what: str, cid: int, name: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InvalidUpdateError(
            f"{what} holds {bad} NaN or Inf value(s)", client_id=cid, module=name
        )
