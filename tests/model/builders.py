"""Tiny random classifiers built from configs (no downloads) and batches for them."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import Tensor
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedConfig,
)

VOCAB = 100
HIDDEN = 32
NUM_LABELS = 3
ARCHITECTURES = ("bert", "distilbert", "albert")

ConfigT = TypeVar("ConfigT", bound=PreTrainedConfig)


def with_labels(config: ConfigT, num_labels: int) -> ConfigT:
    """``config`` for a ``num_labels``-way head, set as ``fedlora.model.tiny`` sets it.

    transformers 5's configs take ``num_labels`` as a keyword only through the ``**kwargs`` of
    their ``__post_init__``, which the typed ``__init__`` does not list; the property's setter
    gives the same config (the same ``id2label`` and ``label2id``).
    """
    config.num_labels = num_labels
    return config


def tiny_model(kind: str, *, seed: int = 0, num_labels: int = NUM_LABELS) -> Any:
    """A 2-layer, 2-head, hidden-32 classifier in eval mode, without dropout.

    Without dropout, training is deterministic whatever state torch's global generator is in,
    so the tests do not depend on their order.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "bert":
            model: Any = BertForSequenceClassification(
                with_labels(
                    BertConfig(
                        vocab_size=VOCAB,
                        hidden_size=HIDDEN,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        max_position_embeddings=64,
                        hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0,
                    ),
                    num_labels,
                )
            )
        elif kind == "distilbert":
            model = DistilBertForSequenceClassification(
                with_labels(
                    DistilBertConfig(
                        vocab_size=VOCAB,
                        dim=HIDDEN,
                        n_layers=2,
                        n_heads=2,
                        hidden_dim=64,
                        max_position_embeddings=64,
                        dropout=0.0,
                        attention_dropout=0.0,
                        seq_classif_dropout=0.0,
                    ),
                    num_labels,
                )
            )
        elif kind == "albert":
            model = AlbertForSequenceClassification(
                with_labels(
                    AlbertConfig(
                        vocab_size=VOCAB,
                        embedding_size=16,
                        hidden_size=HIDDEN,
                        num_hidden_layers=2,
                        num_attention_heads=2,
                        intermediate_size=64,
                        max_position_embeddings=64,
                        hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0,
                        classifier_dropout_prob=0.0,
                    ),
                    num_labels,
                )
            )
        else:
            raise ValueError(kind)
    return model.eval()


def batch(
    size: int = 6, length: int = 8, *, seed: int = 1, num_labels: int = NUM_LABELS
) -> dict[str, Tensor]:
    """Random token ids with a padded tail on odd rows, and random labels."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (size, length), generator=generator)
    attention_mask = torch.ones(size, length, dtype=torch.long)
    attention_mask[1::2, length - 2 :] = 0
    labels = torch.randint(0, num_labels, (size,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
