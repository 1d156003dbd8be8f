"""Default LoRA targets and heads per architecture, and helpful errors for bad names."""

from __future__ import annotations

import pytest
from torch import nn

from fedlora.errors import ConfigError
from fedlora.model import (
    AdaptedModel,
    default_head_modules,
    default_target_modules,
    linear_module_names,
    resolve_head,
    resolve_targets,
)
from tests.model.builders import tiny_model, with_labels


@pytest.mark.parametrize(
    ("kind", "targets", "head", "adapted"),
    [
        ("bert", ["query", "value"], ["classifier"], 4),
        ("distilbert", ["q_lin", "v_lin"], ["pre_classifier", "classifier"], 4),
        ("albert", ["query", "value"], ["classifier"], 2),  # ALBERT shares one layer's weights
    ],
)
def test_defaults_per_architecture(
    kind: str, targets: list[str], head: list[str], adapted: int
) -> None:
    model = tiny_model(kind)
    assert default_target_modules(model) == targets
    assert default_head_modules(model) == head
    resolved = resolve_targets(model, targets)
    assert len(resolved) == adapted
    assert all(name.rsplit(".", 1)[-1] in targets for name in resolved)


def test_resolve_targets_matches_suffixes_and_full_names_in_module_order() -> None:
    model = tiny_model("bert")
    full = "bert.encoder.layer.1.attention.self.value"
    assert resolve_targets(model, [full]) == [full]
    assert resolve_targets(model, ["value", "layer.0.attention.self.query"]) == [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.value",
        full,
    ]
    # "uery" is a suffix of the string but not of a name component: no match.
    with pytest.raises(ConfigError, match="'uery' matches no linear layer"):
        resolve_targets(model, ["uery"])


def test_bad_target_lists_the_linear_layer_names() -> None:
    model = tiny_model("bert")
    with pytest.raises(ConfigError) as caught:
        AdaptedModel(model, ["q_proj"])
    message = str(caught.value)
    assert "'q_proj' matches no linear layer" in message
    for leaf in ("query", "key", "value", "dense", "classifier"):
        assert leaf in message
    assert "bert.encoder.layer.0.attention.self.query" in message
    assert "\n" not in message


def test_non_linear_target_is_refused() -> None:
    # "attention" names a module, but not a linear one.
    with pytest.raises(ConfigError, match="'attention' matches no linear layer"):
        resolve_targets(tiny_model("bert"), ["attention"])


def test_linear_module_names_are_full_names_of_linear_layers() -> None:
    model = tiny_model("distilbert")
    names = linear_module_names(model)
    assert "distilbert.transformer.layer.0.attention.q_lin" in names
    assert "classifier" in names
    assert all(isinstance(model.get_submodule(name), nn.Linear) for name in names)
    assert len(names) == 2 * 6 + 2  # q, k, v, out, ffn.lin1, ffn.lin2 per layer + the head


def test_unknown_architecture_asks_for_explicit_targets() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="no default for model_type ''"):
        default_target_modules(model)
    assert default_head_modules(model) == []


def test_head_must_exist_and_not_overlap_targets() -> None:
    model = tiny_model("bert")
    with pytest.raises(ConfigError, match="'clasifier' is not a module"):
        resolve_head(model, ["clasifier"])
    with pytest.raises(ConfigError, match="lies in the head module 'classifier'"):
        AdaptedModel(model, ["classifier"], ["classifier"])


def test_peft_suffix_matching_of_heads_is_caught() -> None:
    # PEFT's modules_to_save matches "classifier" as a plain suffix, so it would also wrap
    # DistilBERT's "pre_classifier" and train it behind our back.
    model = tiny_model("distilbert")
    with pytest.raises(ConfigError, match="would train \\['classifier', 'pre_classifier'\\]"):
        AdaptedModel(model, None, ["classifier"])
    assert AdaptedModel(model, None, ["pre_classifier", "classifier"]).head_modules == (
        "pre_classifier",
        "classifier",
    )


def test_three_attention_projections_reproduce_byun_and_lees_counts() -> None:
    # 552,960 LoRA parameters per rank-20 client and 179,715 on average for 10 % at rank 20 and
    # 90 % at rank 5 (their mix): q, k and v of DistilBERT-base, not the default q and v.
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from fedlora.model import AdaptedModel

    model = DistilBertForSequenceClassification(with_labels(DistilBertConfig(), 4))
    shapes = AdaptedModel(model, ["q_lin", "k_lin", "v_lin"]).module_shapes()

    def params(rank: int) -> int:
        return sum(rank * (out + inp) for out, inp in shapes.values())

    assert params(20) == 552_960
    assert params(7) == 193_536  # their equal-budget homogeneous baseline
    assert abs((0.1 * params(20) + 0.9 * params(5)) - 179_715) < 5
    default = DistilBertForSequenceClassification(with_labels(DistilBertConfig(), 4))
    assert sum(20 * (o + i) for o, i in AdaptedModel(default).module_shapes().values()) != 552_960
