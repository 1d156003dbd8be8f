"""Checkpoints: one file per round, written whole or not at all, checked before it is trusted.

A checkpoint is a single safetensors file, ``checkpoint/round-NNNNN.safetensors``: the global
adapter's tensors, and in its metadata the round, the seed, the digest of the run's config, the
rank policy's state, the driver's extra state and a SHA-256 of every tensor's bytes.  It is
written to a temporary file, fsynced, renamed, and the folder fsynced; only then is the
checkpoint before the previous one removed, so a crash at any instant leaves at least one
complete checkpoint.  On resume the newest checkpoint that passes every check is used (a bad one
is reported and the one before it tried); a checkpoint that fails is never used.

Everything random in a round derives from ``(seed, round, client)``, so the global state, the
round and the rank policy's state are all a run needs to continue exactly; FLoRA's merged rounds
are kept beside it (:class:`fedlora.runs.merged.MergedStore`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from fedlora.aggregation.state import GlobalState
from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors
from fedlora.runs import faults

log = logging.getLogger(__name__)

PREFIX = "round-"
SUFFIX = ".safetensors"
KEEP = 2


@dataclass
class Checkpoint:
    """The global state after ``state.round`` rounds, plus what the runner must restore."""

    state: GlobalState
    policy_state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Expected:
    """What a checkpoint of this run must hold: the checks of :func:`load_checkpoint`."""

    config_digests: frozenset[str]
    """The digests of the run's identity at every length up to its own (a run continued to more
    rounds resumes from a checkpoint of its shorter self) and its legacy form (the whole config,
    written before 2026-11-26; it matches only while the config keys are unchanged)."""
    seed: int
    max_round: int
    module_shapes: Mapping[str, tuple[int, int]]
    dense_shapes: Mapping[str, tuple[int, ...]]


def config_digest(config_toml: str) -> str:
    return hashlib.sha256(config_toml.encode("utf-8")).hexdigest()


def save_checkpoint(checkpoint: Checkpoint, directory: Path, config_identity: str) -> Path:
    """Write the checkpoint of ``checkpoint.state.round`` as one unit; the older ones beyond the
    last :data:`KEEP` are removed afterwards."""
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
        "config": config_digest(config_identity),
        "policy_state": checkpoint.policy_state,
        "extra": checkpoint.extra,
        "sha256": _digest(tensors),
    }
    path = directory / f"{PREFIX}{state.round:05d}{SUFFIX}"
    tmp = path.with_name(path.name + ".tmp")
    faults.point("checkpoint:write")
    save_file(tensors, str(tmp), metadata={"fedlora": json.dumps(meta, sort_keys=True)})
    faults.point("checkpoint:fsync")
    _fsync(tmp)
    faults.point("checkpoint:rename")
    os.replace(tmp, path)
    faults.point("checkpoint:fsync-dir")
    _fsync(directory)
    faults.point("checkpoint:prune")
    for old, _ in _rounds(directory)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(directory: Path, expected: Expected | None = None) -> Checkpoint:
    """The newest checkpoint that passes every check (with ``expected``: this run's).

    A bad checkpoint is logged and the previous one tried; none good is a one-line error.
    """
    problems = []
    for path, _ in _rounds(directory):
        try:
            return _read(path, expected)
        except FedloraError as error:
            log.warning("checkpoint %s is not usable: %s", path.name, error)
            problems.append(str(error))
    if not problems:
        raise FedloraError(f"no checkpoint in {directory}")
    raise FedloraError(f"no usable checkpoint in {directory}: {problems[0]}")


def has_checkpoint(directory: Path) -> bool:
    return bool(_rounds(directory))


def _read(path: Path, expected: Expected | None) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["fedlora"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as error:
        raise FedloraError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    round_index, seed = meta.get("round"), meta.get("seed")
    if not isinstance(round_index, int) or isinstance(round_index, bool) or round_index < 0:
        raise FedloraError(f"{path}: round {round_index!r} is not a round")
    if f"{PREFIX}{round_index:05d}{SUFFIX}" != path.name:
        raise FedloraError(f"{path}: holds round {round_index}, not the round of its name")
    if meta.get("sha256") != _digest(tensors):
        raise FedloraError(f"{path}: its tensors do not match their checksum")
    if expected is not None:
        _check_run(path, meta, round_index, seed, expected)
    state = _state(path, tensors, round_index, int(seed), expected)
    return Checkpoint(
        state=state,
        policy_state=dict(meta.get("policy_state") or {}),
        extra=dict(meta.get("extra") or {}),
    )


def _check_run(
    path: Path, meta: Mapping[str, Any], round_index: int, seed: object, expected: Expected
) -> None:
    if meta.get("config") not in expected.config_digests:
        raise FedloraError(f"{path}: saved by a run with another config")
    if seed != expected.seed:
        raise FedloraError(f"{path}: seed {seed!r}, but the run's seed is {expected.seed}")
    if round_index > expected.max_round:
        raise FedloraError(f"{path}: round {round_index} is past the run's {expected.max_round}")


def _state(
    path: Path,
    tensors: Mapping[str, Tensor],
    round_index: int,
    seed: int,
    expected: Expected | None,
) -> GlobalState:
    factors: dict[str, dict[str, Tensor]] = {}
    dense: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise FedloraError(f"{path}: tensor {key!r} is not finite floating point")
        kind, _, rest = key.partition("/")
        if kind == "lora":
            name, _, which = rest.rpartition("/")
            factors.setdefault(name, {})[which] = tensor
        elif kind == "dense":
            dense[rest] = tensor
        else:
            raise FedloraError(f"{path}: unexpected tensor {key!r}")
    modules = {}
    for name, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise FedloraError(f"{path}: module {name!r} lacks A or B")
        modules[name] = FoldedFactors(A=pair["A"], B=pair["B"])
    if expected is not None:
        _check_shapes(path, modules, dense, expected)
    return GlobalState(modules=modules, dense=dense, round=round_index, seed=seed)


def _check_shapes(
    path: Path,
    modules: Mapping[str, FoldedFactors],
    dense: Mapping[str, Tensor],
    expected: Expected,
) -> None:
    if set(modules) != set(expected.module_shapes) or set(dense) != set(expected.dense_shapes):
        raise FedloraError(f"{path}: its modules are not the run's adapted modules")
    for name, f in modules.items():
        out, inp = expected.module_shapes[name]
        rank = f.A.shape[0]
        if f.A.ndim != 2 or f.B.ndim != 2 or f.A.shape != (rank, inp) or f.B.shape != (out, rank):
            raise FedloraError(f"{path}: module {name!r} has factors of the wrong shape")
    for name, tensor in dense.items():
        if tuple(tensor.shape) != tuple(expected.dense_shapes[name]):
            raise FedloraError(f"{path}: dense tensor {name!r} has the wrong shape")


def _rounds(directory: Path) -> list[tuple[Path, int]]:
    """The checkpoint files, newest round first (temporary files are not checkpoints)."""
    found = []
    for path in directory.glob(f"{PREFIX}*{SUFFIX}") if directory.is_dir() else ():
        number = path.name.removeprefix(PREFIX).removesuffix(SUFFIX)
        if number.isdigit():
            found.append((path, int(number)))
    return sorted(found, key=lambda item: item[1], reverse=True)


def _digest(tensors: Mapping[str, Tensor]) -> str:
    sha = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        sha.update(key.encode("utf-8"))
        sha.update(str(tensor.dtype).encode())
        sha.update(str(tuple(tensor.shape)).encode())
        sha.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return sha.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
