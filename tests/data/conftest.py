"""Fixtures for the data tests: the real benchmark subsets and a tiny offline tokenizer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def real_data_dir() -> Path | None:
    """``$FEDLORA_DATA``, else ``<repo>/../shared/data``, if it exists."""
    env = os.environ.get("FEDLORA_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT / ".." / "shared" / "data")
    for candidate in candidates:
        if (candidate / "ag_news").is_dir() and (candidate / "dbpedia_14").is_dir():
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real data not found: set FEDLORA_DATA or provide <repo>/../shared/data")
    return found


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A WordPiece tokenizer over a handful of words, built from a vocab file (no download)."""
    from transformers import BertTokenizer  # the fast (tokenizers) class in transformers 5

    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "fast", "."]
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return BertTokenizer(vocab=str(vocab))  # transformers 5 names it `vocab`
