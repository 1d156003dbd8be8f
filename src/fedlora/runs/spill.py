"""Client updates spilled to disk: one safetensors file per client, read back one module at a time.

A round whose updates would not fit in memory (80 clients at LLaMA-7B shapes send 20+ GB of
factors) keeps each update in a file as it arrives; :func:`open_update` gives a
:class:`~fedlora.lora.ClientUpdate` whose ``modules`` mapping reads a module's factors only when
it is looked up (from a memory-mapped file), freed with its factors.  The aggregators already
work module by module, so they aggregate such updates unchanged, holding one module of every
client at a time.  Dense tensors (a classification head: small, one shape for every client) are
read whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from fedlora.errors import FedloraError
from fedlora.lora import ClientUpdate, FoldedFactors, LoraFactors

SpillMode = Literal["auto", "memory", "disk"]
SPILL_MODES: tuple[SpillMode, ...] = ("auto", "memory", "disk")

SPILL_ABOVE_BYTES = 2 * 1024**3
"""``auto`` spills a round whose served factors total more than this (2 GiB, float32)."""

_READ_ERRORS = (SafetensorError, OSError, KeyError, ValueError, TypeError)


def spills(mode: SpillMode, round_bytes: int) -> bool:
    """Whether a round whose clients were served ``round_bytes`` of factors goes to disk."""
    if mode not in SPILL_MODES:
        raise FedloraError(f"aggregation.spill {mode!r} is not one of {', '.join(SPILL_MODES)}")
    return mode == "disk" or (mode == "auto" and round_bytes > SPILL_ABOVE_BYTES)


def save_update(update: ClientUpdate, path: Path) -> ClientUpdate:
    """Write ``update`` to ``path`` and return it read back lazily (see :func:`open_update`)."""
    tensors: dict[str, Tensor] = {}
    modules: dict[str, dict[str, Any]] = {}
    for name, factors in update.modules.items():
        tensors[f"lora/{name}/A"] = factors.A.contiguous()
        tensors[f"lora/{name}/B"] = factors.B.contiguous()
        modules[name] = {"alpha": factors.alpha, "r": factors.r, "use_rslora": factors.use_rslora}
    for name, tensor in update.dense.items():
        tensors[f"dense/{name}"] = tensor.contiguous()
    metadata = {
        "client_id": str(update.client_id),
        "num_examples": str(update.num_examples),
        "modules": json.dumps(modules),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return open_update(path)


def open_update(path: Path) -> ClientUpdate:
    """The update stored in ``path``; its factors are read when a module is looked up."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            modules = json.loads(metadata["modules"])
            dense = {
                key.removeprefix("dense/"): handle.get_tensor(key).clone()
                for key in handle.keys()  # noqa: SIM118 (a safetensors handle, not a dict)
                if key.startswith("dense/")
            }
            client_id, num_examples = int(metadata["client_id"]), int(metadata["num_examples"])
        settings = {
            name: _Settings(float(m["alpha"]), int(m["r"]), bool(m["use_rslora"]))
            for name, m in modules.items()
        }
    except _READ_ERRORS as error:
        raise _unreadable(path, error) from None
    return ClientUpdate(client_id, SpilledFactors(path, settings), num_examples, dense)


@dataclass(frozen=True)
class _Settings:
    alpha: float
    r: int
    use_rslora: bool


class SpilledFactors(Mapping[str, LoraFactors]):
    """A client's LoRA factors in a spilled file, each module read when it is looked up.

    The file is memory-mapped only while a module is read: a module costs memory only while
    its factors are alive.
    """

    def __init__(self, path: Path, settings: Mapping[str, _Settings]) -> None:
        self.path = path
        self._settings = dict(settings)

    def __getitem__(self, name: str) -> LoraFactors:
        settings = self._settings[name]
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                # Copied out of the mapping: owned, aligned memory computes bit for bit as an
                # update that never left memory, and the file can go while the state keeps it.
                A = handle.get_tensor(f"lora/{name}/A").clone()
                B = handle.get_tensor(f"lora/{name}/B").clone()
        except _READ_ERRORS as error:
            raise _unreadable(self.path, error) from None
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != settings.r or B.shape[1] != settings.r:
            raise FedloraError(
                f"spilled file {self.path} is corrupt: module {name!r} has A{tuple(A.shape)} "
                f"and B{tuple(B.shape)} for rank {settings.r}"
            )
        return LoraFactors(
            A=A, B=B, alpha=settings.alpha, r=settings.r, use_rslora=settings.use_rslora
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)


class FactorFiles(MutableMapping[str, FoldedFactors]):
    """Folded factors in a folder, one safetensors file per module, written as they are set.

    Given to ``Aggregator.aggregate(into=...)``, the new global state goes to disk module by
    module as it is combined (rank 200 on LLaMA-7B's 224 modules is 2 GB of float32) and is
    read back one module at a time.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, Path] = {}

    def __setitem__(self, name: str, factors: FoldedFactors) -> None:
        path = self._files.get(name, self.directory / f"module-{len(self._files):05d}.safetensors")
        self.directory.mkdir(parents=True, exist_ok=True)
        save_file({"A": factors.A.contiguous(), "B": factors.B.contiguous()}, str(path))
        self._files[name] = path

    def __getitem__(self, name: str) -> FoldedFactors:
        path = self._files[name]
        try:
            with safe_open(str(path), framework="pt") as handle:
                return FoldedFactors(
                    A=handle.get_tensor("A").clone(), B=handle.get_tensor("B").clone()
                )
        except _READ_ERRORS as error:
            raise _unreadable(path, error) from None

    def __delitem__(self, name: str) -> None:
        self._files.pop(name).unlink()

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _unreadable(path: Path, error: BaseException) -> FedloraError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return FedloraError(f"spilled file {path} is unreadable or corrupt: {reason}")
