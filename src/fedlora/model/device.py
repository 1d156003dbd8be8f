"""Where the base model runs (``model.device``), in which precision (``model.dtype``), and
whether it keeps its activations (``train.gradient_checkpointing``).

``"auto"`` is the first CUDA GPU when torch sees one, else the CPU; it is resolved on the machine
that loads the model, so every Flower node picks its own GPU or CPU.  Asking for CUDA where torch
sees none is a one-line :class:`~fedlora.errors.ConfigError` naming ``model.device``.

The precision is the frozen base weights': LoRA factors stay float32 whatever it is (PEFT's
``autocast_adapter_dtype``), so a client trains, and the server aggregates, float32 factors.
float16 is accepted on the CPU too: torch runs it there (slowly; bfloat16 is the CPU's half
precision), and it lets the loss-scaled training path that GPUs without bfloat16 need be tested
on any machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from fedlora.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""``model.dtype`` names and their torch dtypes."""


def resolve_device(spec: str) -> torch.device:
    """The torch device of ``model.device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::([0-9]+))?", spec)
    if match is None:
        raise ConfigError(f"model.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise ConfigError(
            f"model.device: {spec!r} asked for, but torch {torch.__version__} ({build}) sees no "
            f"CUDA device here; use 'cpu' or 'auto'"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"model.device: {spec!r} asked for, but torch sees {count} CUDA device(s) "
            f"(cuda:0..cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of ``model.dtype``, checked against what ``device`` supports."""
    if name not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not _cuda_bf16(device):
        raise ConfigError(
            f"model.dtype: {torch.cuda.get_device_name(device)} ({device}) has no native "
            f"bfloat16; use 'float16' or 'float32'"
        )
    return dtype


@contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """Fork torch's default generators of the CPU and, on a GPU, of ``device``; restore them.

    ``torch.manual_seed`` inside seeds every device's generator: forking the GPU's as well keeps
    its state untouched afterwards, as the CPU's is.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        yield


def enable_checkpointing(model: Any) -> None:
    """Turn on Hugging Face's activation (gradient) checkpointing, non-reentrant.

    Every decoder or encoder layer then keeps only its input and recomputes its activations in
    the backward pass (with the dropout masks of the forward pass): about one more forward pass
    per step for far less activation memory.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"train.gradient_checkpointing: {type(model).__name__} does not support it; set it "
            f"to false"
        )
    enable = getattr(model, "activation_checkpointing_enable", None)
    if callable(enable):  # transformers >= 5.x
        enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _cuda_bf16(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8
