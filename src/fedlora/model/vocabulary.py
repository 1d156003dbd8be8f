"""Refuse a tokenizer that cannot encode text, before any training at chance level.

From a model folder saved without its tokenizer files, ``AutoTokenizer`` does not fail: it
builds the model type's tokenizer from its special tokens alone (BERT: ``[PAD] [UNK] [CLS] [SEP]
[MASK]``; GPT-2: ``<|endoftext|>``), so every word becomes ``[UNK]`` (or nothing) and a run
"works" at chance.  That is an error.  A vocabulary of fewer than :data:`SMALL_VOCABULARY` tokens
is only a warning: toy and character-level models are legitimate (the tests use vocabularies of
a few dozen tokens), but for a pretrained language model it almost always means the wrong tokenizer.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from fedlora.errors import ConfigError

SMALL_VOCABULARY = 100
"""Fewer tokens than this: a warning that natural text will be mostly unknown tokens."""


def check_vocabulary(tokenizer: Any, name_or_path: str, path: str) -> None:
    """Raise if ``tokenizer``, loaded from ``path``, knows only special tokens; warn if few."""
    folder = Path(path).expanduser()
    source = f"folder {folder}" if folder.is_dir() else f"hub repository {path!r}"
    size = len(tokenizer)
    if size <= len(set(tokenizer.all_special_ids)):
        raise ConfigError(
            f"model {name_or_path!r}: {source} has no tokenizer files (tokenizer.json, vocab.txt, "
            f"...): the tokenizer built without them knows only its {size} special token(s), so "
            f"every word would be unknown; save the tokenizer beside the model"
        )
    if size < SMALL_VOCABULARY:
        warnings.warn(
            f"model {name_or_path!r}: the tokenizer of {source} has only {size} tokens; unless "
            f"this is a toy vocabulary, natural text will be mostly unknown tokens",
            UserWarning,
            stacklevel=3,
        )
