"""One frozen base model shared by every simulated client, with LoRA adapters swapped in place.

Simulating hundreds of clients must not rebuild (or copy) the model per client per round.  The
base model is wrapped by PEFT once; each distinct *adapter layout* (the rank of every module and
the client's :class:`~fedlora.lora.LoraSettings`) gets one named PEFT adapter, created the first
time a client with that layout trains and reused afterwards.  Switching clients is then PEFT's
``set_adapter`` (flags only) plus an in-place ``copy_`` of the client's factors into the adapter's
parameters; the number of adapters is bounded by the number of rank tiers, not by the number of
clients, and the least recently used ones are deleted beyond ``max_adapters``.

Per-module ranks use PEFT's ``rank_pattern`` with every module's full name, regex-escaped: PEFT
matches a pattern key ``k`` against a module name ``n`` with ``re.match(rf"(.*\\.)?({k})$", n)``,
so an escaped full name selects exactly that module.  The scale of each module is PEFT's
``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA), as in :mod:`fedlora.lora.factors`.

Names are *canonical*: the module's name in the unwrapped model (``bert.encoder.layer.0.
attention.self.query``), never PEFT's ``base_model.model.`` prefix or an adapter name, so they
are the same for every adapter and match :class:`~fedlora.aggregation.GlobalState` keys.  Dense
tensors of the head are named like the unwrapped model's parameters (``classifier.weight``).
Each adapter has its own copy of the head (PEFT ``modules_to_save``), so an adapter *is* a
client's complete trainable state; the original head stays frozen and is the round-0 head.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import torch
from torch import Tensor, nn

from fedlora.errors import ConfigError, FedloraError
from fedlora.lora.factors import FoldedFactors, LoraFactors
from fedlora.lora.settings import LoraSettings
from fedlora.lora.update import ClientUpdate
from fedlora.model.targets import (
    default_head_modules,
    default_target_modules,
    is_projection,
    projection_shape,
    resolve_head,
    resolve_targets,
)


@dataclass(frozen=True)
class AdapterLayout:
    """What makes two clients' adapters interchangeable: ranks per module and LoRA settings."""

    ranks: tuple[tuple[str, int], ...]
    lora: LoraSettings

    def rank_map(self) -> dict[str, int]:
        return dict(self.ranks)


@dataclass
class _AdapterSlot:
    """Live parameters of one PEFT adapter, looked up once so that swaps cost no module search."""

    name: str
    factors: dict[str, tuple[nn.Parameter, nn.Parameter]]
    dense: dict[str, nn.Parameter]


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
        self._linears: dict[str, nn.Module] = {
            name: _projection(base_model.get_submodule(name), name) for name in targets
        }
        kinds = {type(module).__name__ for module in self._linears.values()}
        if len(kinds) > 1:
            raise ConfigError(
                f"target_modules mixes layer kinds {sorted(kinds)}: PEFT adapts Conv1D layers "
                f"(weights stored in x out) only when no nn.Linear is targeted with them"
            )
        self._transposed = kinds == {"Conv1D"}
        self._head_originals = {name: base_model.get_submodule(name) for name in head}
        self._max_adapters = max_adapters
        self._init_seed = init_seed
        self._peft: Any = None
        self._adapters: OrderedDict[AdapterLayout, _AdapterSlot] = OrderedDict()
        self._created = 0
        self._active: AdapterLayout | None = None
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
        return {name: projection_shape(layer) for name, layer in self._linears.items()}

    def dense_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the head's trainable tensors, by canonical parameter name."""
        return {name: tuple(tensor.shape) for name, tensor in self._original_dense()}

    def initial_dense(self) -> dict[str, Tensor]:
        """The head as loaded (float32 copies): the round-0 dense state every client starts from."""
        return {
            name: tensor.detach().to(torch.float32, copy=True)
            for name, tensor in self._original_dense()
        }

    # ------------------------------------------------------------------ adapters

    @property
    def active_layout(self) -> AdapterLayout | None:
        return self._active

    @property
    def num_adapters(self) -> int:
        """How many layouts currently have an adapter in memory."""
        return len(self._adapters)

    def layouts(self) -> list[AdapterLayout]:
        """The layouts in memory, least recently activated first."""
        return list(self._adapters)

    def layout(self, rank_map: Mapping[str, int] | int, lora: LoraSettings) -> AdapterLayout:
        """Validate a client's ranks (one for all modules, or one per module)."""
        if isinstance(rank_map, Mapping):
            unknown = sorted(set(rank_map) - set(self._targets))
            missing = [name for name in self._targets if name not in rank_map]
            if unknown or missing:
                raise ConfigError(
                    f"rank map must name exactly the adapted modules; unknown: {unknown[:3]}, "
                    f"missing: {missing[:3]} (e.g. {self._targets[0]!r})"
                )
            ranks = tuple((name, rank_map[name]) for name in self._targets)
        else:
            ranks = tuple((name, rank_map) for name in self._targets)
        shapes = self.module_shapes()
        checked: list[tuple[str, int]] = []
        for name, r in ranks:
            out, inp = shapes[name]
            if isinstance(r, bool) or not isinstance(r, Integral) or not 1 <= r <= min(out, inp):
                raise ConfigError(
                    f"module {name!r}: rank {r!r} is outside 1..{min(out, inp)}, the range of "
                    f"its {out} x {inp} layer"
                )
            checked.append((name, int(r)))
        return AdapterLayout(ranks=tuple(checked), lora=lora)

    def activate(self, rank_map: Mapping[str, int] | int, lora: LoraSettings) -> AdapterLayout:
        """Make the adapter of this layout the active one, creating it on first use.

        The adapter keeps the values it had when it was last active; call :meth:`load` to start
        a client from the global state.
        """
        layout = self.layout(rank_map, lora)
        slot = self._adapters.get(layout)
        if slot is None:
            slot = self._create(layout)
        self._adapters.move_to_end(layout)
        if self._active != layout:
            self._peft.set_adapter(slot.name)
            self._active = layout
        self._apply_freeze()
        while len(self._adapters) > self._max_adapters:
            _, evicted = self._adapters.popitem(last=False)
            self._peft.delete_adapter(evicted.name)
        return layout

    def load(self, factors: Mapping[str, LoraFactors], dense: Mapping[str, Tensor]) -> None:
        """Copy a client's starting factors and head into the active adapter, in place.

        Every adapted module and every head tensor must be given, with the active layout's rank,
        alpha and rsLoRA flag: a mismatch would silently change the effective update.
        """
        layout, slot = self._require_active("load")
        _check_names("factors", factors, self._targets)
        _check_names("dense", dense, slot.dense)
        ranks, lora = layout.rank_map(), layout.lora
        pairs: list[tuple[nn.Parameter, Tensor]] = []
        for name, given in factors.items():
            if (
                given.r != ranks[name]
                or given.use_rslora != lora.use_rslora
                or not math.isclose(given.alpha, lora.alpha, rel_tol=1e-9)
            ):
                raise FedloraError(
                    f"module {name!r}: factors have r={given.r}, alpha={given.alpha}, "
                    f"rslora={given.use_rslora} but the active adapter has r={ranks[name]}, "
                    f"alpha={lora.alpha}, rslora={lora.use_rslora}"
                )
            A, B = slot.factors[name]
            pairs += [_checked(f"module {name!r} A", A, given.A)]
            pairs += [_checked(f"module {name!r} B", B, given.B)]
        for name, tensor in dense.items():
            pairs.append(_checked(f"dense {name!r}", slot.dense[name], tensor))
        with torch.no_grad():  # only after every check passed: never a half-loaded adapter
            for target, source in pairs:
                target.copy_(source)

    def extract(self, client_id: int, num_examples: int) -> ClientUpdate:
        """The active adapter's factors and head as detached float32 copies."""
        layout, slot = self._require_active("extract")
        ranks = layout.rank_map()
        modules = {
            name: LoraFactors(
                A=_snapshot(A),
                B=_snapshot(B),
                alpha=layout.lora.alpha,
                r=ranks[name],
                use_rslora=layout.lora.use_rslora,
            )
            for name, (A, B) in slot.factors.items()
        }
        dense = {name: _snapshot(parameter) for name, parameter in slot.dense.items()}
        return ClientUpdate(
            client_id=client_id, modules=modules, num_examples=num_examples, dense=dense
        )

    def lora_parameters(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """Live ``(A, B)`` parameters of the active adapter, in module order (for regularisers)."""
        _, slot = self._require_active("lora_parameters")
        return list(slot.factors.values())

    def named_lora_parameters(self) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """Live ``(A, B)`` parameters of the active adapter by canonical module name."""
        _, slot = self._require_active("named_lora_parameters")
        return dict(slot.factors)

    def freeze_A(self, frozen: bool = True) -> None:
        """Keep ``A`` fixed during training (FFA-LoRA); stays in force across adapter switches."""
        self._A_frozen = frozen
        if self._active is not None:
            self._apply_freeze()

    @property
    def A_frozen(self) -> bool:
        return self._A_frozen

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: the active adapter's ``A`` (unless frozen), ``B``, head."""
        _, slot = self._require_active("trainable_parameters")
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
        self.add_to_base({name: f.delta() for name, f in updates.items() if f.rank > 0})

    def add_to_base(self, deltas: Mapping[str, Tensor]) -> None:
        """Add dense ``out x in`` deltas to the frozen base weights (restoring merged updates)."""
        unknown = sorted(set(deltas) - set(self._linears))
        if unknown:
            raise FedloraError(f"merge_into_base: unknown modules {unknown[:3]}")
        with torch.no_grad():
            for name, delta in deltas.items():
                weight = self.base_weight(name)
                expected = (int(weight.shape[0]), int(weight.shape[1]))
                if tuple(delta.shape) != expected:
                    raise FedloraError(
                        f"merge_into_base: module {name!r} update is {delta.shape[0]} x "
                        f"{delta.shape[1]}, its weight is {expected[0]} x {expected[1]}"
                    )
                weight.add_(delta.to(device=weight.device, dtype=weight.dtype))

    def base_weight(self, module: str) -> Tensor:
        """The live frozen weight (``out x in``) of an adapted module (a transposed view for
        Conv1D layers, whose weight is stored ``in x out``)."""
        weight = _weight(self._linears[module])
        return weight.T if self._transposed else weight

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
        return _weight(next(iter(self._linears.values()))).device

    # ------------------------------------------------------------------ internals

    def _original_dense(self) -> Iterator[tuple[str, Tensor]]:
        for head, module in self._head_originals.items():
            for name, parameter in module.named_parameters():
                yield f"{head}.{name}", parameter

    def _require_active(self, what: str) -> tuple[AdapterLayout, _AdapterSlot]:
        if self._active is None:
            raise FedloraError(f"{what}: no adapter is active; call activate(rank_map, lora) first")
        return self._active, self._adapters[self._active]

    def _apply_freeze(self) -> None:
        _, slot = self._require_active("freeze_A")
        for A, _ in slot.factors.values():
            A.requires_grad_(not self._A_frozen)

    def _create(self, layout: AdapterLayout) -> _AdapterSlot:
        from peft import LoraConfig, get_peft_model

        name = f"layout{self._created}"
        self._created += 1
        ranks = layout.rank_map()
        options: dict[str, Any] = {
            "r": max(ranks.values()),
            "lora_alpha": layout.lora.alpha,  # typed int by PEFT, used as a float (alpha / r)
            "use_rslora": layout.lora.use_rslora,
            "target_modules": list(self._targets),
            "rank_pattern": {re.escape(module): r for module, r in layout.ranks},
            "modules_to_save": list(self._head) or None,
            "lora_dropout": layout.lora.dropout,
            "bias": "none",
            "fan_in_fan_out": self._transposed,
        }
        config = LoraConfig(**options)
        training = self.model.training
        with _quiet_peft(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._init_seed)
            if self._peft is None:
                self._peft = get_peft_model(self.model, config, adapter_name=name)
            else:
                self._peft.add_adapter(name, config)
        # PEFT creates its dropout modules in training mode whatever the model's mode is.
        self.model.train(training)
        slot = self._slot(name, ranks)
        self._adapters[layout] = slot
        return slot

    def _slot(self, name: str, ranks: Mapping[str, int]) -> _AdapterSlot:
        """Find the new adapter's parameters and check that PEFT built what was asked."""
        factors: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        for module in self._targets:
            layer: Any = self.model.get_submodule(module)
            A = layer.lora_A[name].weight
            B = layer.lora_B[name].weight
            if A.shape[0] != ranks[module] or layer.get_base_layer() is not self._linears[module]:
                raise FedloraError(
                    f"internal: PEFT built rank {A.shape[0]} for {module!r}, "
                    f"expected {ranks[module]}"
                )
            factors[module] = (A, B)
        from peft.utils.other import ModulesToSaveWrapper

        wrapped = {
            module_name
            for module_name, module in self.model.named_modules()
            if isinstance(module, ModulesToSaveWrapper)
        }
        if wrapped != set(self._head):
            raise FedloraError(f"internal: PEFT wrapped {sorted(wrapped)} for head {self._head}")
        dense: dict[str, nn.Parameter] = {}
        for head in self._head:
            wrapper: Any = self.model.get_submodule(head)
            copy = wrapper.modules_to_save[name]
            for parameter_name, parameter in copy.named_parameters():
                dense[f"{head}.{parameter_name}"] = parameter
        return _AdapterSlot(name=name, factors=factors, dense=dense)


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


def _check_names(
    what: str, given: Mapping[str, Any], expected: Sequence[str] | Mapping[str, Any]
) -> None:
    unknown = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    if unknown or missing:
        raise FedloraError(
            f"load: {what} must cover exactly the active adapter's tensors; "
            f"unknown: {unknown[:3]}, missing: {missing[:3]}"
        )


def _checked(what: str, target: nn.Parameter, source: Tensor) -> tuple[nn.Parameter, Tensor]:
    if tuple(source.shape) != tuple(target.shape):
        raise FedloraError(
            f"load: {what} has shape {tuple(source.shape)}, the adapter needs {tuple(target.shape)}"
        )
    return target, source


def _snapshot(tensor: Tensor) -> Tensor:
    return tensor.detach().to(torch.float32, copy=True)


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """Hide a deprecation warning PEFT triggers inside transformers on every adapter creation."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield
