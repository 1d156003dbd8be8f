"""The server's global adapter: what every aggregator returns and every client is served from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors, LoraFactors
from fedlora.lora.settings import LoraSettings
from fedlora.lora.slot_init import fresh_lora_A


@dataclass(frozen=True)
class GlobalState:
    """Scale-folded global factors per module, averaged dense tensors, and FLoRA's base update.

    The slot order of ``modules`` is meaningful: a client of rank ``r`` receives the first ``r``
    slots.  Slots beyond the global rank are served freshly initialised (``B`` zero), so a
    high-rank client never receives dead slots.  ``merge_into_base`` is non-empty only for
    aggregators that merge the round's update into the frozen base weights (FLoRA); the runner
    adds ``B @ A`` of each entry to the base weight of that module once.
    """

    modules: Mapping[str, FoldedFactors]
    dense: Mapping[str, Tensor] = field(default_factory=dict)
    round: int = 0
    seed: int = 0
    merge_into_base: Mapping[str, FoldedFactors] = field(default_factory=dict)

    @classmethod
    def initial(
        cls,
        shapes: Mapping[str, tuple[int, int]],
        *,
        dense: Mapping[str, Tensor] | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> GlobalState:
        """The round-0 state: no slots yet, so every client starts from the same fresh init.

        ``shapes`` maps module names to ``(out_features, in_features)`` of the adapted layer.
        """
        modules = {
            name: FoldedFactors.empty(out, inp, dtype) for name, (out, inp) in shapes.items()
        }
        return cls(modules=modules, dense=dict(dense or {}), round=0, seed=seed)

    def rank_map(self) -> dict[str, int]:
        """The global rank of every module (the number of slots the state holds)."""
        return {name: factors.rank for name, factors in self.modules.items()}

    def delta(self, module: str) -> Tensor:
        """The effective update ``B @ A`` of the global adapter on ``module`` (``out x in``)."""
        return self.modules[module].delta()

    def factors_for(
        self, rank_map: Mapping[str, int] | int, lora: LoraSettings
    ) -> dict[str, LoraFactors]:
        """The factors a client of the given ranks and LoRA settings starts its next round from.

        ``rank_map`` is one rank for every module or a rank per module.  The client's
        ``s * B @ A`` equals the global update truncated to its first ``r`` slots.
        """
        result: dict[str, LoraFactors] = {}
        for name, factors in self.modules.items():
            r = _rank_of(rank_map, name)
            limit = min(factors.out_features, factors.in_features)
            if not 1 <= r <= limit:
                raise FedloraError(
                    f"module {name!r}: rank {r} is outside 1..{limit}, the range of its "
                    f"{factors.out_features} x {factors.in_features} layer"
                )
            result[name] = self.slots(name, r).unfold(r, lora)
        return result

    def slots(self, name: str, r: int) -> FoldedFactors:
        """The first ``r`` folded slots of ``name``, with fresh slots where the state has fewer."""
        factors = self.modules[name]
        missing = r - factors.rank
        if missing <= 0:
            return FoldedFactors(A=factors.A[:r], B=factors.B[:, :r])
        fresh = fresh_lora_A(
            name,
            factors.in_features,
            r,
            seed=self.seed,
            round_index=self.round,
            dtype=factors.A.dtype,
        )[factors.rank :]
        zeros = torch.zeros(factors.out_features, missing, dtype=factors.B.dtype)
        return FoldedFactors(
            A=torch.cat([factors.A, fresh]), B=torch.cat([factors.B, zeros], dim=1)
        )


def _rank_of(rank_map: Mapping[str, int] | int, name: str) -> int:
    if isinstance(rank_map, Mapping):
        if name not in rank_map:
            raise FedloraError(f"no rank given for module {name!r}")
        return rank_map[name]
    return rank_map
