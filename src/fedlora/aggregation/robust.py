"""Optional robust aggregation: a norm bound per client update and a cap on claimed data size.

The papers aggregate whatever arrives, and so does fedlora by default.  A federation over
networks it does not control can bound what one client does to a round:

- ``norm_bound = c``: a client whose LoRA update ``||s B A||_F`` (all modules together) exceeds
  ``c`` times the round's median is clipped down to it (``bound_mode = "clip"``: ``B`` scaled
  as it is read, ``A`` untouched, so FFA's frozen ``A`` stays the served one) or dropped
  (``"reject"``); its dense tensors (a classification head) are bounded the same way against
  their own median;
- ``max_examples = n``: a client's claimed data size counts as at most ``n`` (a client that
  claims 10^12 examples would otherwise carry almost all the weight).

With clipping, a client of weight ``p`` moves a linear aggregate (``sum p_k s_k B_k A_k``, what
FlexLoRA decomposes) by at most ``p * c * median``, whatever it sends.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from fedlora.aggregation.hetlora import update_norm
from fedlora.errors import FedloraError
from fedlora.lora.factors import LoraFactors
from fedlora.lora.update import ClientUpdate

BoundMode = Literal["clip", "reject"]


@dataclass(frozen=True)
class Bounding:
    """What the bounds did to one round: the updates to aggregate and what happened to whom."""

    updates: list[ClientUpdate]
    clipped: dict[int, float]
    rejected: dict[int, str]
    capped: dict[int, int]


def lora_norm(update: ClientUpdate) -> float:
    """``sqrt(sum over modules of ||s B A||_F^2)`` in float64 (no overflow below 1e150), one
    module in memory at a time (a loop variable would keep the previous one while reading)."""
    modules = update.modules
    squares = (float(update_norm(modules[n].folded(torch.float64))) ** 2 for n in modules)
    return math.sqrt(sum(squares))


def dense_norm(update: ClientUpdate) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in update.dense.values()))


def bound_updates(
    updates: Sequence[ClientUpdate],
    *,
    norm_bound: float = 0.0,
    mode: BoundMode = "clip",
    max_examples: int = 0,
) -> Bounding:
    """Apply the bounds (0 = off) to one round's validated updates."""
    if norm_bound < 0 or max_examples < 0 or mode not in ("clip", "reject"):
        raise FedloraError(
            f"robust bounds: norm_bound {norm_bound} and max_examples {max_examples} must be "
            f">= 0 and bound_mode 'clip' or 'reject', got {mode!r}"
        )
    bounded = list(updates)
    capped: dict[int, int] = {}
    if max_examples:
        for i, update in enumerate(bounded):
            if update.num_examples > max_examples:
                capped[update.client_id] = update.num_examples
                bounded[i] = replace(update, num_examples=max_examples)
    clipped: dict[int, float] = {}
    rejected: dict[int, str] = {}
    if norm_bound and bounded:
        bounded = _bound(bounded, lora_norm, _scale_lora, norm_bound, mode, clipped, rejected)
        if any(u.dense for u in bounded):
            bounded = _bound(bounded, dense_norm, _scale_dense, norm_bound, mode, clipped, rejected)
    return Bounding(bounded, clipped, rejected, capped)


def _bound(
    updates: list[ClientUpdate],
    norm: Callable[[ClientUpdate], float],
    scale: Callable[[ClientUpdate, float], ClientUpdate],
    bound: float,
    mode: BoundMode,
    clipped: dict[int, float],
    rejected: dict[int, str],
) -> list[ClientUpdate]:
    """Bound ``norm`` at ``bound`` times the round's median (a zero median bounds nothing)."""
    norms = [norm(u) for u in updates]
    limit = bound * statistics.median(norms)
    kept = []
    for update, value in zip(updates, norms, strict=True):
        if value <= limit or limit == 0.0:
            kept.append(update)
        elif mode == "reject":
            rejected[update.client_id] = f"update norm {value:.3g} above {limit:.3g}"
        else:
            clipped[update.client_id] = value
            kept.append(scale(update, limit / value))
    return kept


def _scale_lora(update: ClientUpdate, factor: float) -> ClientUpdate:
    return replace(update, modules=ScaledFactors(update.modules, factor))


class ScaledFactors(Mapping[str, LoraFactors]):
    """A clipped client's factors, ``B`` scaled as each module is looked up: clipping an update
    spilled to disk reads one module at a time, as aggregating it does."""

    def __init__(self, factors: Mapping[str, LoraFactors], factor: float) -> None:
        self.factors = factors
        self.factor = factor

    def __getitem__(self, name: str) -> LoraFactors:
        factors = self.factors[name]
        return replace(factors, B=factors.B * self.factor)

    def __iter__(self) -> Iterator[str]:
        return iter(self.factors)

    def __len__(self) -> int:
        return len(self.factors)


def _scale_dense(update: ClientUpdate, factor: float) -> ClientUpdate:
    return replace(update, dense={n: t * factor for n, t in update.dense.items()})
