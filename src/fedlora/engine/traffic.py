"""Communication counts: what one client receives and sends in one round, by kind.

LoRA factors, dense tensors (a classification head) and FLoRA's merged updates are counted
apart: a head can dominate the upload of a small-rank federation, and a reader comparing
methods by communication needs to see which part is which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor

from fedlora.lora import LoraFactors, MergedRound


@dataclass(frozen=True)
class Traffic:
    """Parameters by kind, and the bytes of all of them as they travel."""

    lora_params: int = 0
    dense_params: int = 0
    merged_params: int = 0
    bytes: int = 0

    @classmethod
    def of(
        cls,
        factors: Mapping[str, LoraFactors],
        dense: Mapping[str, Tensor],
        merged: Iterable[MergedRound] = (),
    ) -> Traffic:
        lora = [t for f in factors.values() for t in (f.A, f.B)]
        merged = list(merged)
        return cls(
            lora_params=sum(t.numel() for t in lora),
            dense_params=sum(t.numel() for t in dense.values()),
            merged_params=sum(m.num_parameters() for m in merged),
            bytes=_nbytes(lora) + _nbytes(dense.values()) + sum(m.num_bytes() for m in merged),
        )

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            lora_params=self.lora_params + other.lora_params,
            dense_params=self.dense_params + other.dense_params,
            merged_params=self.merged_params + other.merged_params,
            bytes=self.bytes + other.bytes,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "lora_params": self.lora_params,
            "dense_params": self.dense_params,
            "merged_params": self.merged_params,
            "bytes": self.bytes,
        }


def total(items: Iterable[Traffic]) -> Traffic:
    return sum(items, Traffic())


def _nbytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
