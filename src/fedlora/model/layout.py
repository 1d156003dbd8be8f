"""An adapter layout, what makes two clients' adapters interchangeable, and its PEFT config.

Per-module ranks use PEFT's ``rank_pattern`` with every module's full name, regex-escaped: PEFT
matches a pattern key ``k`` against a module name ``n`` with ``re.match(rf"(.*\\.)?({k})$", n)``,
so an escaped full name selects exactly that module.  The scale of each module is PEFT's
``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA), as in :mod:`fedlora.lora.settings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING

from fedlora.errors import ConfigError
from fedlora.lora.settings import LoraSettings

if TYPE_CHECKING:
    from peft import LoraConfig


@dataclass(frozen=True)
class AdapterLayout:
    """The rank of every adapted module, in module order, and the adapter's LoRA settings."""

    ranks: tuple[tuple[str, int], ...]
    lora: LoraSettings

    @classmethod
    def of(
        cls,
        rank_map: Mapping[str, int] | int,
        lora: LoraSettings,
        shapes: Mapping[str, tuple[int, int]],
    ) -> AdapterLayout:
        """A client's layout from its ranks (one for all modules, or one per module).

        ``shapes`` gives ``(out, in)`` of every adapted module in module order; each rank must
        fit its layer.
        """
        targets = list(shapes)
        if isinstance(rank_map, Mapping):
            unknown = sorted(set(rank_map) - set(targets))
            missing = [name for name in targets if name not in rank_map]
            if unknown or missing:
                raise ConfigError(
                    f"rank map must name exactly the adapted modules; unknown: {unknown[:3]}, "
                    f"missing: {missing[:3]} (e.g. {targets[0]!r})"
                )
            ranks = tuple((name, rank_map[name]) for name in targets)
        else:
            ranks = tuple((name, rank_map) for name in targets)
        checked: list[tuple[str, int]] = []
        for name, r in ranks:
            out, inp = shapes[name]
            if isinstance(r, bool) or not isinstance(r, Integral) or not 1 <= r <= min(out, inp):
                raise ConfigError(
                    f"module {name!r}: rank {r!r} is outside 1..{min(out, inp)}, the range of "
                    f"its {out} x {inp} layer"
                )
            checked.append((name, int(r)))
        return cls(ranks=tuple(checked), lora=lora)

    def rank_map(self) -> dict[str, int]:
        return dict(self.ranks)

    def peft_config(self, head: Sequence[str], fan_in_fan_out: bool) -> LoraConfig:
        """PEFT's ``LoraConfig`` of an adapter of this layout, its copy of ``head`` trained too."""
        from peft import LoraConfig

        return LoraConfig(
            r=max(r for _, r in self.ranks),
            # PEFT types lora_alpha int but uses it as a float (alpha / r).
            lora_alpha=self.lora.alpha,  # type: ignore[arg-type]
            use_rslora=self.lora.use_rslora,
            target_modules=[name for name, _ in self.ranks],
            rank_pattern={re.escape(name): r for name, r in self.ranks},
            modules_to_save=list(head) or None,
            lora_dropout=self.lora.dropout,
            bias="none",
            fan_in_fan_out=fan_in_fan_out,
        )
