"""(prompt, response) pairs tokenised once for causal-LM fine-tuning, served as padded batches.

Each row is ``template(prompt)`` tokenised with the tokenizer's special tokens (BOS where the
tokenizer adds one), followed by the response tokenised without special tokens and the EOS token,
so that the model learns to stop.  Prompt and response are tokenised separately, exactly as
:func:`~fedlora.model.generation.generate_greedy` tokenises a prompt, so that training and
generation see the same prompt tokens.

``labels`` are the input ids with ``-100`` (ignored by the loss) on padding and, with
``response_only=True``, on the prompt tokens: the loss is then the response's likelihood only.
The model shifts the labels itself (Hugging Face causal LMs predict ``labels[t]`` from position
``t - 1``).

Truncation to ``max_length``: up to ``response_budget`` response tokens (default half of
``max_length``) are kept before the prompt is cut below its length; the prompt loses tokens from
the *left* (its end, next to the response, is kept), the response from the right (it may lose its
EOS).  Every row cut in any way is counted in ``num_truncated``, and rows whose response was cut
in ``num_response_truncated``, so that a too-small ``max_length`` is visible in a run's report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedlora.data.tokenized import batch_order, trimmed_batches
from fedlora.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Indices = Sequence[int] | npt.NDArray[np.integer] | Tensor

IGNORE_INDEX = -100
"""The label that Hugging Face (and torch's cross-entropy) leave out of the loss."""

PROMPT_FIELD = "{prompt}"


def apply_template(template: str, prompt: str) -> str:
    """``template`` with ``{prompt}`` replaced by ``prompt`` (other braces are left alone)."""
    if PROMPT_FIELD not in template:
        raise ConfigError(f"prompt template must contain {PROMPT_FIELD}, got {template!r}")
    return template.replace(PROMPT_FIELD, prompt)


@dataclass(frozen=True, eq=False)
class TokenizedInstructions:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` of every (prompt, response).

    ``lengths`` holds each row's real token count and ``prompt_lengths`` its (kept) prompt token
    count; positions ``[prompt_length, length)`` are the response, EOS included.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    lengths: Tensor
    prompt_lengths: Tensor
    num_truncated: int
    num_response_truncated: int
    max_length: int
    pad_token_id: int
    response_only: bool

    def __post_init__(self) -> None:
        n = len(self.lengths)
        for key in ("input_ids", "attention_mask", "labels", "prompt_lengths"):
            if len(getattr(self, key)) != n:
                raise ConfigError(
                    f"TokenizedInstructions: {key} has {len(getattr(self, key))} rows, not {n}"
                )

    @classmethod
    def from_pairs(
        cls,
        prompts: Sequence[str],
        responses: Sequence[str],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        *,
        template: str = PROMPT_FIELD,
        response_only: bool = True,
        response_budget: int | None = None,
    ) -> TokenizedInstructions:
        """Tokenise the pairs (see the module docstring for the layout and the truncation)."""
        if max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {max_length}")
        if len(prompts) != len(responses):
            raise ConfigError(f"{len(prompts)} prompts but {len(responses)} responses")
        if len(prompts) == 0:
            raise ConfigError("cannot tokenise an empty list of (prompt, response) pairs")
        budget = max_length // 2 if response_budget is None else response_budget
        if not 1 <= budget <= max_length:
            raise ConfigError(f"response_budget must be in 1..{max_length}, got {budget}")
        for i, response in enumerate(responses):
            if not isinstance(response, str) or not response.strip():
                raise ConfigError(
                    f"row {i}: the response is empty ({response!r}); drop the row or fill it in"
                )
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError(
                "tokenizer has no eos token to end the responses with; set tokenizer.eos_token"
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        texts = [apply_template(template, prompt) for prompt in prompts]
        prompt_rows: list[list[int]] = tokenizer(texts, add_special_tokens=True)["input_ids"]
        response_rows: list[list[int]] = tokenizer(list(responses), add_special_tokens=False)[
            "input_ids"
        ]
        rows: list[list[int]] = []
        prompt_lengths: list[int] = []
        truncated = response_truncated = 0
        for i, (prompt_ids, response_ids) in enumerate(
            zip(prompt_rows, response_rows, strict=True)
        ):
            if not response_ids:
                raise ConfigError(
                    f"row {i}: the response {responses[i]!r} has no tokens; drop the row"
                )
            answer = [*response_ids, int(eos)]
            keep_answer = min(len(answer), max(max_length - len(prompt_ids), budget))
            keep_prompt = min(len(prompt_ids), max_length - keep_answer)
            if keep_answer < len(answer) or keep_prompt < len(prompt_ids):
                truncated += 1
                response_truncated += keep_answer < len(answer)
            kept_prompt = prompt_ids[len(prompt_ids) - keep_prompt :]
            rows.append([*kept_prompt, *answer[:keep_answer]])
            prompt_lengths.append(keep_prompt)
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        width = int(lengths.max())
        positions = np.arange(width)[None, :]
        mask = positions < lengths[:, None]
        ids = np.full((len(rows), width), int(pad), dtype=np.int64)
        ids[mask] = np.fromiter((t for row in rows for t in row), dtype=np.int64)
        starts = np.asarray(prompt_lengths, dtype=np.int64)
        learned = mask & (positions >= starts[:, None]) if response_only else mask
        labels = np.where(learned, ids, IGNORE_INDEX)
        return cls(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            labels=torch.from_numpy(labels),
            lengths=torch.from_numpy(lengths),
            prompt_lengths=torch.from_numpy(starts),
            num_truncated=truncated,
            num_response_truncated=response_truncated,
            max_length=max_length,
            pad_token_id=int(pad),
            response_only=response_only,
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(
        self,
        indices: Indices,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, Tensor]]:
        """Batches of the rows at ``indices``, shuffled with ``generator`` if one is given, each
        trimmed to its longest row (dynamic padding).  Tensors are copies, safe to modify.
        """
        rows = batch_order(indices, len(self), batch_size, generator)
        tokens = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
        }
        return trimmed_batches(rows, batch_size, drop_last, self.lengths, tokens, {})
