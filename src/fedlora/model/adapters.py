"""PEFT adapters on one base model, one per layout: created on first use, swapped, evicted.

Simulating hundreds of clients must not rebuild (or copy) the model per client per round.  Each
distinct :class:`~fedlora.model.layout.AdapterLayout` gets one named PEFT adapter, created the
first time a client with that layout trains and reused afterwards.  Switching clients is then
PEFT's ``set_adapter`` (flags only) plus an in-place ``copy_`` of the client's factors into the
adapter's parameters; the number of adapters is bounded by the number of rank tiers, not by the
number of clients, and the least recently used ones are deleted beyond ``max_adapters``.

Each adapter has its own copy of the head (PEFT ``modules_to_save``), so an adapter *is* a
client's complete trainable state; the original head stays frozen and is the round-0 head.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fedlora.errors import FedloraError
from fedlora.lora.factors import LoraFactors
from fedlora.lora.update import ClientUpdate
from fedlora.model.device import fork_rng
from fedlora.model.layers import TargetLayers
from fedlora.model.layout import AdapterLayout


@dataclass
class AdapterSlot:
    """Live parameters of one PEFT adapter, looked up once so that swaps cost no module search."""

    name: str
    layout: AdapterLayout
    factors: dict[str, tuple[nn.Parameter, nn.Parameter]]
    dense: dict[str, nn.Parameter]

    def load(self, factors: Mapping[str, LoraFactors], dense: Mapping[str, Tensor]) -> None:
        """Copy a client's factors and head into this adapter, in place, after every check.

        Every adapted module and every head tensor must be given, with this layout's rank, alpha
        and rsLoRA flag: a mismatch would silently change the effective update.
        """
        _check_names("factors", factors, self.factors)
        _check_names("dense", dense, self.dense)
        ranks, lora = self.layout.rank_map(), self.layout.lora
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
            A, B = self.factors[name]
            pairs += [_checked(f"module {name!r} A", A, given.A)]
            pairs += [_checked(f"module {name!r} B", B, given.B)]
        for name, tensor in dense.items():
            pairs.append(_checked(f"dense {name!r}", self.dense[name], tensor))
        with torch.no_grad():  # only after every check passed: never a half-loaded adapter
            for target, source in pairs:
                target.copy_(source)

    def extract(self, client_id: int, num_examples: int) -> ClientUpdate:
        """This adapter's factors and head as detached float32 copies on the CPU."""
        ranks, lora = self.layout.rank_map(), self.layout.lora
        modules = {
            name: LoraFactors(
                A=_snapshot(A),
                B=_snapshot(B),
                alpha=lora.alpha,
                r=ranks[name],
                use_rslora=lora.use_rslora,
            )
            for name, (A, B) in self.factors.items()
        }
        dense = {name: _snapshot(parameter) for name, parameter in self.dense.items()}
        return ClientUpdate(
            client_id=client_id, modules=modules, num_examples=num_examples, dense=dense
        )


class AdapterPool:
    """The PEFT adapters of one model, one per layout, least recently activated first.

    Parameters
    ----------
    model : the base model; PEFT wraps its targets on the first adapter's creation.
    layers : its target projections.
    head : canonical names of the densely trained head modules (PEFT ``modules_to_save``).
    max_adapters : how many adapters stay in memory.
    init_seed : seed of the (forked) RNG that initialises a new adapter.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: TargetLayers,
        head: Sequence[str],
        *,
        max_adapters: int,
        init_seed: int,
    ) -> None:
        self.model = model
        self._layers = layers
        self._head = tuple(head)
        self._max_adapters = max_adapters
        self._init_seed = init_seed
        self._peft: Any = None
        self._slots: OrderedDict[AdapterLayout, AdapterSlot] = OrderedDict()
        self._created = 0
        self.active: AdapterSlot | None = None

    def __len__(self) -> int:
        return len(self._slots)

    def layouts(self) -> list[AdapterLayout]:
        """The layouts in memory, least recently activated first."""
        return list(self._slots)

    def activate(self, layout: AdapterLayout) -> AdapterSlot:
        """Make the adapter of ``layout`` the active one, creating it on first use."""
        slot = self._slots.get(layout)
        if slot is None:
            slot = self._create(layout)
        self._slots.move_to_end(layout)
        if self.active is not slot:
            self._peft.set_adapter(slot.name)
            self.active = slot
        while len(self._slots) > self._max_adapters:
            _, evicted = self._slots.popitem(last=False)
            self._peft.delete_adapter(evicted.name)
        return slot

    def _create(self, layout: AdapterLayout) -> AdapterSlot:
        from peft import get_peft_model

        name = f"layout{self._created}"
        self._created += 1
        config = layout.peft_config(self._head, self._layers.transposed)
        training = self.model.training
        with _quiet_peft(), fork_rng(self._layers.device):
            torch.manual_seed(self._init_seed)
            if self._peft is None:
                self._peft = get_peft_model(self.model, config, adapter_name=name)
            else:
                self._peft.add_adapter(name, config)
        # PEFT creates its dropout modules in training mode whatever the model's mode is.
        self.model.train(training)
        slot = self._find(name, layout)
        self._slots[layout] = slot
        return slot

    def _find(self, name: str, layout: AdapterLayout) -> AdapterSlot:
        """Find the new adapter's parameters and check that PEFT built what was asked."""
        factors: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        for module, rank in layout.ranks:
            layer: Any = self.model.get_submodule(module)
            A = layer.lora_A[name].weight
            B = layer.lora_B[name].weight
            if A.shape[0] != rank or layer.get_base_layer() is not self._layers[module]:
                raise FedloraError(
                    f"internal: PEFT built rank {A.shape[0]} for {module!r}, expected {rank}"
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
            _train_in_float32(copy)
            for parameter_name, parameter in copy.named_parameters():
                dense[f"{head}.{parameter_name}"] = parameter
        return AdapterSlot(name=name, layout=layout, factors=factors, dense=dense)


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
    """A float32 copy on the CPU, where updates are exchanged, aggregated and checkpointed."""
    return tensor.detach().to(device="cpu", dtype=torch.float32, copy=True)


def _train_in_float32(module: nn.Module) -> None:
    """Keep an adapter's trained copy of a head in float32 on a half-precision base model.

    PEFT upcasts LoRA factors to float32 (``autocast_adapter_dtype``) but copies a
    ``modules_to_save`` head at the base model's dtype, where AdamW's small steps round away.
    The copy is cast to float32; its floating inputs are cast to float32 on the way in and its
    outputs back to the input's dtype on the way out, so the layers around it see no change.
    """
    floating = [p for p in module.parameters() if p.is_floating_point()]
    if all(p.dtype == torch.float32 for p in floating):
        return
    module.to(torch.float32)
    seen: dict[str, torch.dtype] = {}

    def cast_inputs(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        for value in (*args, *kwargs.values()):
            if isinstance(value, Tensor) and value.is_floating_point():
                seen["dtype"] = value.dtype
                break
        return _cast(args, torch.float32), _cast(kwargs, torch.float32)

    def cast_output(_: nn.Module, __: Any, output: Any) -> Any:
        dtype = seen.get("dtype")
        return output if dtype is None else _cast(output, dtype)

    module.register_forward_pre_hook(cast_inputs, with_kwargs=True)
    module.register_forward_hook(cast_output)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in ``value`` (a tensor, tuple, list or dict) cast to ``dtype``."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple | list):
        return type(value)(_cast(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _cast(item, dtype) for key, item in value.items()}
    return value


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """Hide a deprecation warning PEFT triggers inside transformers on every adapter creation."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield
