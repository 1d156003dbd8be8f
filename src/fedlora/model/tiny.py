"""A tiny random BERT classifier with the real MiniLM tokenizer, for smoke runs without a hub.

Tests, benchmarks and quick trials use it where the model's quality does not matter: it loads in
milliseconds and trains a round in a second, with real tokenisation of real text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedlora.model.loading import resolve_model_path


def save_tiny_bert(path: Path, *, num_labels: int = 4, seed: int = 0) -> Path:
    """Write a 2-layer, 32-wide random BERT and the MiniLM tokenizer to ``path``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
