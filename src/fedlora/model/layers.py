"""The projections LoRA adapts: their shapes and the frozen base weights every adapter shares.

PEFT wraps each target projection in a LoRA layer that keeps the projection as its base layer, so
its weight is shared by every adapter: a merge into it (FLoRA) changes the model for every client.
GPT-2's ``Conv1D`` stores its weight ``in x out``; PEFT adapts it with ``fan_in_fan_out``, which
holds for all targets or none, so one model's targets are all ``nn.Linear`` or all ``Conv1D``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fedlora.errors import ConfigError, FedloraError
from fedlora.lora.factors import FoldedFactors
from fedlora.model.targets import is_projection, projection_shape


class TargetLayers:
    """The target projections of ``model`` by canonical name, in module order."""

    def __init__(self, model: nn.Module, targets: Sequence[str]) -> None:
        self._layers: dict[str, nn.Module] = {
            name: _projection(model.get_submodule(name), name) for name in targets
        }
        kinds = {type(module).__name__ for module in self._layers.values()}
        if len(kinds) > 1:
            raise ConfigError(
                f"target_modules mixes layer kinds {sorted(kinds)}: PEFT adapts Conv1D layers "
                f"(weights stored in x out) only when no nn.Linear is targeted with them"
            )
        self.transposed = kinds == {"Conv1D"}
        """Whether the weights are stored ``in x out`` (PEFT's ``fan_in_fan_out``)."""

    def __getitem__(self, name: str) -> nn.Module:
        return self._layers[name]

    def shapes(self) -> dict[str, tuple[int, int]]:
        """``(out, in)`` of every target, the input of ``GlobalState.initial``."""
        return {name: projection_shape(layer) for name, layer in self._layers.items()}

    def weight(self, name: str) -> Tensor:
        """The live frozen weight (``out x in``) of a target (a transposed view for Conv1D)."""
        weight = _weight(self._layers[name])
        return weight.T if self.transposed else weight

    def merge(self, updates: Mapping[str, FoldedFactors]) -> None:
        """Add each ``B @ A`` (already scale-folded) to its target's frozen weight."""
        deltas = {name: f.delta() for name, f in updates.items() if f.rank > 0}
        unknown = sorted(set(deltas) - set(self._layers))
        if unknown:
            raise FedloraError(f"merge_into_base: unknown modules {unknown[:3]}")
        with torch.no_grad():
            for name, delta in deltas.items():
                weight = self.weight(name)
                expected = (int(weight.shape[0]), int(weight.shape[1]))
                if tuple(delta.shape) != expected:
                    raise FedloraError(
                        f"merge_into_base: module {name!r} update is {delta.shape[0]} x "
                        f"{delta.shape[1]}, its weight is {expected[0]} x {expected[1]}"
                    )
                weight.add_(delta.to(device=weight.device, dtype=weight.dtype))

    @property
    def device(self) -> torch.device:
        return _weight(next(iter(self._layers.values()))).device

    @property
    def dtype(self) -> torch.dtype:
        return _weight(next(iter(self._layers.values()))).dtype


def _projection(module: nn.Module, name: str) -> nn.Module:
    if not is_projection(module):
        raise ConfigError(
            f"target {name!r} is a {type(module).__name__}, not an nn.Linear or Conv1D"
        )
    return module


def _weight(layer: nn.Module) -> Tensor:
    weight = layer.weight
    if not isinstance(weight, Tensor):
        raise FedloraError(f"internal: a {type(layer).__name__} without a weight tensor")
    return weight
