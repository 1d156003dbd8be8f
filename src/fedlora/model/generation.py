"""Greedy generation from a causal LM, and evaluation by generation (not teacher forcing).

Teacher-forced argmax accuracy feeds the model the reference tokens and so overstates what it
produces on its own; the evaluation here lets the model continue each prompt greedily and compares
the continuation with the reference response.

Prompts are tokenised exactly as :class:`~fedlora.model.instructions.TokenizedInstructions` does
(the template applied, the tokenizer's special tokens added) and left-padded within a batch, so
that every row's next token follows its last real token.  Only the new tokens are decoded, cut at
the first EOS, with special tokens skipped.  Greedy decoding is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedlora.errors import ConfigError
from fedlora.instruct.metrics import exact_match
from fedlora.model.adapted import AdaptedModel
from fedlora.model.instructions import PROMPT_FIELD, apply_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationResult:
    """Exact-match rate (:func:`~fedlora.instruct.metrics.exact_match`) of greedy continuations,
    and the outputs."""

    exact_match: float
    outputs: list[str]
    num_truncated_prompts: int


def generate_greedy(
    model: AdaptedModel | nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    template: str = PROMPT_FIELD,
    max_prompt_length: int | None = None,
) -> list[str]:
    """The greedy continuation of every prompt (new tokens only, decoded), in order.

    ``max_prompt_length`` keeps the last tokens of longer prompts (their end, next to the
    answer); :func:`evaluate_generation` reports how many were cut.
    """
    outputs, _ = _generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        template=template,
        max_prompt_length=max_prompt_length,
    )
    return outputs


def evaluate_generation(
    model: AdaptedModel | nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    template: str = PROMPT_FIELD,
    max_prompt_length: int | None = None,
) -> GenerationResult:
    """Generate greedily and score :func:`~fedlora.instruct.metrics.exact_match` against the
    references."""
    if len(prompts) != len(references):
        raise ConfigError(f"{len(prompts)} prompts but {len(references)} references")
    outputs, truncated = _generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        template=template,
        max_prompt_length=max_prompt_length,
    )
    hits = sum(exact_match(out, ref) for out, ref in zip(outputs, references, strict=True))
    return GenerationResult(
        exact_match=hits / len(outputs), outputs=outputs, num_truncated_prompts=truncated
    )


def _generate(
    model: AdaptedModel | nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    template: str,
    max_prompt_length: int | None,
) -> tuple[list[str], int]:
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ConfigError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, not one string")
    if len(prompts) == 0:
        return [], 0
    from transformers import GenerationConfig

    make_config: Any = GenerationConfig  # untyped constructor

    network: Any = model.model if isinstance(model, AdaptedModel) else model
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise ConfigError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    config = make_config(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=int(pad),
        eos_token_id=None if eos is None else int(eos),
    )
    rows: list[list[int]] = tokenizer(
        [apply_template(template, prompt) for prompt in prompts], add_special_tokens=True
    )["input_ids"]
    truncated = 0
    if max_prompt_length is not None:
        truncated = sum(len(row) > max_prompt_length for row in rows)
        rows = [row[-max_prompt_length:] for row in rows]
    if any(not row for row in rows):
        raise ConfigError("a prompt has no tokens (and the tokenizer adds no BOS); cannot generate")
    device = next(network.parameters()).device
    outputs: list[str] = []
    training = bool(network.training)
    network.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                width = max(len(row) for row in chunk)
                input_ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
                attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, row in enumerate(chunk):
                    input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                    attention_mask[i, width - len(row) :] = 1
                generated = network.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
                for new in generated[:, width:].tolist():
                    if eos is not None and eos in new:
                        new = new[: new.index(eos)]
                    outputs.append(str(tokenizer.decode(new, skip_special_tokens=True)))
    finally:
        network.train(training)
    return outputs, truncated
