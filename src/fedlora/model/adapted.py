"""One frozen base model shared by every simulated client, with LoRA adapters swapped in place.

:class:`AdaptedModel` is what the trainer, the evaluators and the runners see; it is built from
three parts, as PEFT splits ``tuners/lora`` into ``config.py``, ``layer.py`` and ``model.py``:
:mod:`~fedlora.model.layout` (a client's ranks and LoRA settings, and their PEFT config),
:mod:`~fedlora.model.layers` (the target projections and their frozen base weights) and
:mod:`~fedlora.model.adapters` (the PEFT adapters in memory, swapped and evicted).

Names are *canonical*: the module's name in the unwrapped model (``bert.encoder.layer.0.
attention.self.query``), never PEFT's ``base_model.model.`` prefix or an adapter name, so they
are the same for every adapter and match :class:`~fedlora.aggregation.GlobalState` keys.  Dense
tensors of the head are named like the unwrapped model's parameters (``classifier.weight``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fedlora.errors import ConfigError, FedloraError
from fedlora.lora.factors import FoldedFactors, LoraFactors
from fedlora.lora.settings import LoraSettings
from fedlora.lora.update import ClientUpdate
from fedlora.model.adapters import AdapterPool, AdapterSlot
from fedlora.model.layers import TargetLayers
from fedlora.model.layout import AdapterLayout
from fedlora.model.targets import (
    default_head_modules,
    default_target_modules,
    resolve_head,
    resolve_targets,
)


class AdaptedModel:
    """A base model plus one PEFT LoRA adapter per layout; exactly one adapter is active.

    Parameters
    ----------
    base_model:
        A Hugging Face model (or any ``nn.Module`` with ``nn.Linear`` targets).  It is modified in
        place (PEFT wraps the target layers) and its own weights are frozen.
    target_modules:
        LoRA targets (PEFT suffix matching); ``None`` uses the architecture's default.
    head_modules:
        Modules trained densely (PEFT ``modules_to_save``); ``None`` uses the classifier head.
    max_adapters:
        How many layouts stay in memory; the least recently activated are deleted beyond it.
    init_seed:
        Seed of the (forked) RNG that initialises a new adapter before its first ``load``.
    """

    def __init__(
        self,
        base_model: nn.Module,
        target_modules: Sequence[str] | None = None,
        head_modules: Sequence[str] | None = None,
        *,
        max_adapters: int = 8,
        init_seed: int = 0,
    ) -> None:
        if max_adapters < 1:
            raise ConfigError(f"max_adapters must be at least 1, got {max_adapters}")
        targets = resolve_targets(
            base_model,
            default_target_modules(base_model) if target_modules is None else target_modules,
        )
        head = resolve_head(
            base_model, default_head_modules(base_model) if head_modules is None else head_modules
        )
        for name in targets:
            for part in head:
                if name == part or name.startswith(part + "."):
                    raise ConfigError(
                        f"target_modules: {name!r} lies in the head module {part!r}, which is "
                        f"trained densely; drop it from target_modules or from head_modules"
                    )
        suffix_matches = {
            name for name, _ in base_model.named_modules() if any(name.endswith(h) for h in head)
        }
        if suffix_matches != set(head):
            raise ConfigError(
                f"head_modules: PEFT matches modules_to_save by plain name suffix, so {list(head)} "
                f"would train {sorted(suffix_matches)}; list all of them in head_modules"
            )
        self.model = base_model
        self._targets = tuple(targets)
        self._head = tuple(head)
        self._layers = TargetLayers(base_model, targets)
        self._head_originals = {name: base_model.get_submodule(name) for name in head}
        self._adapters = AdapterPool(
            base_model, self._layers, head, max_adapters=max_adapters, init_seed=init_seed
        )
        self._A_frozen = False
        for parameter in base_model.parameters():
            parameter.requires_grad_(False)
        base_model.eval()

    # ------------------------------------------------------------------ names and shapes

    @property
    def target_modules(self) -> tuple[str, ...]:
        """Canonical names of the LoRA-adapted layers, in module order."""
        return self._targets

    @property
    def head_modules(self) -> tuple[str, ...]:
        """Canonical names of the densely trained head modules."""
        return self._head

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """``(out, in)`` of every adapted layer, the input of ``GlobalState.initial``."""
        return self._layers.shapes()

    def dense_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the head's trainable tensors, by canonical parameter name."""
        return {name: tuple(tensor.shape) for name, tensor in self._original_dense()}

    def initial_dense(self) -> dict[str, Tensor]:
        """The head as loaded (float32 copies on the CPU): the round-0 dense state every client
        starts from."""
        return {
            name: tensor.detach().to(device="cpu", dtype=torch.float32, copy=True)
            for name, tensor in self._original_dense()
        }

    # ------------------------------------------------------------------ adapters

    @property
    def active_layout(self) -> AdapterLayout | None:
        active = self._adapters.active
        return None if active is None else active.layout

    @property
    def num_adapters(self) -> int:
        """How many layouts currently have an adapter in memory."""
        return len(self._adapters)

    def layouts(self) -> list[AdapterLayout]:
        """The layouts in memory, least recently activated first."""
        return self._adapters.layouts()

    def activate(self, rank_map: Mapping[str, int] | int, lora: LoraSettings) -> AdapterLayout:
        """Make the adapter of these ranks and settings the active one, creating it on first use.

        The adapter keeps the values it had when it was last active; call :meth:`load` to start
        a client from the global state.
        """
        layout = AdapterLayout.of(rank_map, lora, self.module_shapes())
        self._adapters.activate(layout)
        self._apply_freeze()
        return layout

    def load(self, factors: Mapping[str, LoraFactors], dense: Mapping[str, Tensor]) -> None:
        """Copy a client's starting factors and head into the active adapter, in place."""
        self._require_active("load").load(factors, dense)

    def extract(self, client_id: int, num_examples: int) -> ClientUpdate:
        """The active adapter's factors and head as detached float32 copies on the CPU, whatever
        the base model's device and dtype."""
        return self._require_active("extract").extract(client_id, num_examples)

    def lora_parameters(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """Live ``(A, B)`` parameters of the active adapter, in module order (for regularisers)."""
        return list(self._require_active("lora_parameters").factors.values())

    def named_lora_parameters(self) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """Live ``(A, B)`` parameters of the active adapter by canonical module name."""
        return dict(self._require_active("named_lora_parameters").factors)

    def freeze_A(self, frozen: bool = True) -> None:
        """Keep ``A`` fixed during training (FFA-LoRA); stays in force across adapter switches."""
        self._A_frozen = frozen
        if self._adapters.active is not None:
            self._apply_freeze()

    @property
    def A_frozen(self) -> bool:
        return self._A_frozen

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: the active adapter's ``A`` (unless frozen), ``B``, head."""
        slot = self._require_active("trainable_parameters")
        params: list[nn.Parameter] = []
        for A, B in slot.factors.values():
            if not self._A_frozen:
                params.append(A)
            params.append(B)
        params.extend(slot.dense.values())
        return params

    # ------------------------------------------------------------------ base weights

    def merge_into_base(self, updates: Mapping[str, FoldedFactors]) -> None:
        """Add each ``B @ A`` (already scale-folded) to its module's frozen base weight (FLoRA).

        The base weight is shared by all adapters, so this changes the model for every client.
        """
        self._layers.merge(updates)

    def base_weight(self, module: str) -> Tensor:
        """The live frozen weight (``out x in``) of an adapted module (a transposed view for
        Conv1D layers, whose weight is stored ``in x out``)."""
        return self._layers.weight(module)

    # ------------------------------------------------------------------ forward

    def __call__(self, **batch: Tensor) -> Any:
        """Forward through the base model with the active adapter (or none before activation)."""
        return self.model(**batch)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def eval(self) -> None:
        self.model.eval()

    @property
    def device(self) -> torch.device:
        """Where the base model's weights (and its adapters) are."""
        return self._layers.device

    @property
    def dtype(self) -> torch.dtype:
        """The frozen base weights' precision; LoRA factors are float32 whatever it is."""
        return self._layers.dtype

    # ------------------------------------------------------------------ internals

    def _original_dense(self) -> Iterator[tuple[str, Tensor]]:
        for head, module in self._head_originals.items():
            for name, parameter in module.named_parameters():
                yield f"{head}.{name}", parameter

    def _require_active(self, what: str) -> AdapterSlot:
        active = self._adapters.active
        if active is None:
            raise FedloraError(f"{what}: no adapter is active; call activate(rank_map, lora) first")
        return active

    def _apply_freeze(self) -> None:
        for A, _ in self._require_active("freeze_A").factors.values():
            A.requires_grad_(not self._A_frozen)
