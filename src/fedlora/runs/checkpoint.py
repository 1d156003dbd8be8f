"""Checkpoints: the global adapter as safetensors, round and policy state as JSON.

Everything random in a round derives from ``(seed, round, client)``, so the global state, the
round number and the rank policy's state are all a run needs to continue exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fedlora.aggregation.state import GlobalState
from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors

TENSORS = "global.safetensors"
META = "state.json"


@dataclass
class Checkpoint:
    """The global state after ``state.round`` rounds, plus what the runner must restore.

    FLoRA's merged rounds are not part of it: the run directory keeps one file per merged round
    (:meth:`fedlora.runs.RunDir.save_merged`), re-applied in order on resume.
    """

    state: GlobalState
    policy_state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(checkpoint: Checkpoint, directory: Path) -> None:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    directory.mkdir(parents=True, exist_ok=True)
    state = checkpoint.state
    tensors: dict[str, Tensor] = {}
    for name, factors in state.modules.items():
        tensors[f"lora/{name}/A"] = factors.A.contiguous()
        tensors[f"lora/{name}/B"] = factors.B.contiguous()
    for name, tensor in state.dense.items():
        tensors[f"dense/{name}"] = tensor.contiguous()
    meta = {
        "round": state.round,
        "seed": state.seed,
        "policy_state": checkpoint.policy_state,
        "extra": checkpoint.extra,
    }
    tmp_tensors = directory / (TENSORS + ".tmp")
    tmp_meta = directory / (META + ".tmp")
    save_file(tensors, str(tmp_tensors))
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp_tensors, directory / TENSORS)
    os.replace(tmp_meta, directory / META)


def load_checkpoint(directory: Path) -> Checkpoint:
    """Read a checkpoint; a missing or corrupt file is a one-line error naming it."""
    meta_path, tensor_path = directory / META, directory / TENSORS
    for path in (meta_path, tensor_path):
        if not path.exists():
            raise FedloraError(f"checkpoint file {path} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        round_index, seed = int(meta["round"]), int(meta["seed"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise FedloraError(f"checkpoint file {meta_path} is corrupt ({error})") from None
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as error:
        raise FedloraError(f"checkpoint file {tensor_path} is corrupt ({error})") from None
    factors: dict[str, dict[str, Tensor]] = {}
    dense: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        kind, _, rest = key.partition("/")
        if kind == "lora":
            name, _, which = rest.rpartition("/")
            factors.setdefault(name, {})[which] = tensor
        elif kind == "dense":
            dense[rest] = tensor
        else:
            raise FedloraError(f"checkpoint file {tensor_path}: unexpected tensor {key!r}")
    modules = {}
    for name, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise FedloraError(f"checkpoint file {tensor_path}: module {name!r} lacks A or B")
        modules[name] = FoldedFactors(A=pair["A"], B=pair["B"])
    state = GlobalState(modules=modules, dense=dense, round=round_index, seed=seed)
    return Checkpoint(
        state=state,
        policy_state=dict(meta.get("policy_state", {})),
        extra=dict(meta.get("extra", {})),
    )
