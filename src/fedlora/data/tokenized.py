"""A dataset tokenised once per run and served as dynamically padded batches to every client.

Clients only hold index arrays into one :class:`TokenizedData`, so no text is tokenised again per
client or per round, and each batch is only as wide as its longest row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedlora.data.dataset import TextClassificationData
from fedlora.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Indices = Sequence[int] | npt.NDArray[np.integer] | Tensor


@dataclass(frozen=True, eq=False)
class TokenizedData:
    """Right-padded token ids of every row, padded to the longest row (at most ``max_length``).

    ``lengths`` holds each row's real token count; ``num_truncated`` counts the texts cut to
    ``max_length``, which runs report so that a too-small ``max_length`` is visible.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    lengths: Tensor
    num_truncated: int
    max_length: int
    pad_token_id: int

    def __post_init__(self) -> None:
        n = len(self.labels)
        for key in ("input_ids", "attention_mask", "lengths"):
            if len(getattr(self, key)) != n:
                raise ConfigError(
                    f"TokenizedData: {key} has {len(getattr(self, key))} rows, not {n}"
                )

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        labels: Sequence[int] | npt.NDArray[np.integer] | Tensor,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
    ) -> TokenizedData:
        """Tokenise ``texts`` with the tokenizer's special tokens, truncating to ``max_length``."""
        if max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}")
        if len(texts) == 0:
            raise ConfigError("cannot tokenise an empty list of texts")
        label_tensor = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if len(label_tensor) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(label_tensor)} labels")
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        if pad is None:
            raise ConfigError(
                "tokenizer has neither a pad nor an eos token; set tokenizer.pad_token"
            )
        # One token of headroom tells truncated rows apart without tokenising whole long texts;
        # only those rows are tokenised a second time, at the real limit.
        rows: list[list[int]] = tokenizer(
            list(texts), truncation=True, max_length=max_length + 1, padding=False
        )["input_ids"]
        long = [i for i, row in enumerate(rows) if len(row) > max_length]
        if long:
            again = tokenizer(
                [texts[i] for i in long], truncation=True, max_length=max_length, padding=False
            )["input_ids"]
            for i, row in zip(long, again, strict=True):
                rows[i] = row
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        if lengths.max() > max_length:
            raise ConfigError(f"tokenizer produced {lengths.max()} tokens despite max_length")
        width = max(1, int(lengths.max()))
        mask = np.arange(width)[None, :] < lengths[:, None]
        ids = np.full((len(rows), width), int(pad), dtype=np.int64)
        ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64)
        return cls(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            labels=label_tensor,
            lengths=torch.from_numpy(lengths),
            num_truncated=len(long),
            max_length=max_length,
            pad_token_id=int(pad),
        )

    @classmethod
    def from_dataset(
        cls, data: TextClassificationData, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> TokenizedData:
        """Tokenise a whole :class:`TextClassificationData`."""
        return cls.from_texts(data.texts, data.labels, tokenizer, max_length)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self,
        indices: Indices,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, Tensor]]:
        """Batches of the rows at ``indices``: shuffled with ``generator`` if one is given, else in
        order; each trimmed to its longest row.  Tensors are copies, safe to modify.
        """
        rows = batch_order(indices, len(self), batch_size, generator)
        tokens = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return trimmed_batches(
            rows, batch_size, drop_last, self.lengths, tokens, {"labels": self.labels}
        )


def batch_order(
    indices: Indices, num_rows: int, batch_size: int, generator: torch.Generator | None
) -> Tensor:
    """The checked row order of an epoch (shuffled with ``generator`` if given).

    Checked eagerly, so that bad arguments raise at the call and not at the first batch.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).reshape(-1)
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= num_rows):
        raise ConfigError(f"batch indices must be in [0, {num_rows})")
    if generator is not None:
        idx = idx[torch.randperm(len(idx), generator=generator)]
    return idx


def trimmed_batches(
    order: Tensor,
    batch_size: int,
    drop_last: bool,
    lengths: Tensor,
    per_token: Mapping[str, Tensor],
    per_row: Mapping[str, Tensor],
) -> Iterator[dict[str, Tensor]]:
    """Batches in ``order``, token tensors cut to the batch's longest row (dynamic padding)."""
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        if drop_last and len(rows) < batch_size:
            break
        width = max(1, int(lengths[rows].max()))
        batch = {key: tensor[rows, :width] for key, tensor in per_token.items()}
        batch.update({key: tensor[rows] for key, tensor in per_row.items()})
        yield batch
