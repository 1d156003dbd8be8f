"""Rank tiers: the attention/mlp aliases on real module names, first-match order, config forms."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from fedlora.errors import ConfigError
from fedlora.ranks import GROUP_ALIASES, RankTier

FLEX_TYPE3 = RankTier.parse({"attention": 30, "mlp": 200})

# Module names as `model.named_modules()` reports them for the adapted linear layers.
BERT_ATTENTION = [
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.0.attention.self.key",
    "bert.encoder.layer.0.attention.self.value",
    "bert.encoder.layer.0.attention.output.dense",
]
BERT_MLP = ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.11.output.dense"]
DISTILBERT_ATTENTION = [f"distilbert.transformer.layer.3.attention.{n}_lin" for n in "qkv"] + [
    "distilbert.transformer.layer.3.attention.out_lin"
]
DISTILBERT_MLP = [
    "distilbert.transformer.layer.3.ffn.lin1",
    "distilbert.transformer.layer.3.ffn.lin2",
]
LLAMA_ATTENTION = [f"base_model.model.model.layers.7.self_attn.{n}_proj" for n in "qkvo"]
LLAMA_MLP = [f"model.layers.7.mlp.{n}_proj" for n in ("gate", "up", "down")]
ALBERT_PREFIX = "albert.encoder.albert_layer_groups.0.albert_layers.0."
ALBERT_ATTENTION = [ALBERT_PREFIX + f"attention.{n}" for n in ("query", "key", "value", "dense")]
ALBERT_MLP = [ALBERT_PREFIX + "ffn", ALBERT_PREFIX + "ffn_output"]
NEITHER = [
    "bert.pooler.dense",
    "classifier",
    "pre_classifier",
    "lm_head",
    "model.layers.0.self_attn.xq_proj",
    "albert.encoder.embedding_hidden_mapping_in",
]


@pytest.mark.parametrize(
    ("attention", "mlp"),
    [
        (BERT_ATTENTION, BERT_MLP),
        (DISTILBERT_ATTENTION, DISTILBERT_MLP),
        (LLAMA_ATTENTION, LLAMA_MLP),
        (ALBERT_ATTENTION, ALBERT_MLP),
    ],
    ids=["bert", "distilbert", "llama", "albert"],
)
def test_aliases_split_attention_from_mlp(attention: list[str], mlp: list[str]) -> None:
    tier = RankTier.from_patterns({"attention": 30, "mlp": 200}, default=1)
    ranks = tier.rank_map(attention + mlp + NEITHER)
    assert {name: ranks[name] for name in attention} == dict.fromkeys(attention, 30)
    assert {name: ranks[name] for name in mlp} == dict.fromkeys(mlp, 200)
    assert {name: ranks[name] for name in NEITHER} == dict.fromkeys(NEITHER, 1)


def test_bert_attention_output_is_not_mlp() -> None:
    mlp_only = RankTier.from_patterns({"mlp": 200}, default=8)
    assert mlp_only.rank_for("bert.encoder.layer.0.attention.output.dense") == 8
    assert mlp_only.rank_for("bert.encoder.layer.0.output.dense") == 200


def test_first_matching_pattern_wins_in_declared_order() -> None:
    name = "model.layers.0.self_attn.q_proj"
    assert RankTier.from_patterns({"q_proj": 4, "attention": 16}).rank_for(name) == 4
    assert RankTier.from_patterns({"attention": 16, "q_proj": 4}).rank_for(name) == 16


def test_regex_patterns_are_searched() -> None:
    tier = RankTier.from_patterns({r"layers\.[0-3]\.": 64, "v_proj$": 2}, default=8)
    assert tier.rank_map(
        ["model.layers.2.self_attn.v_proj", "model.layers.12.self_attn.v_proj", "lm_head"]
    ) == {
        "model.layers.2.self_attn.v_proj": 64,
        "model.layers.12.self_attn.v_proj": 2,
        "lm_head": 8,
    }


def test_unused_patterns_flag_aliases_that_miss_the_model() -> None:
    falcon = ["transformer.h.0.self_attention.query_key_value", "transformer.h.0.mlp.dense_h_to_4h"]
    assert FLEX_TYPE3.unused_patterns(falcon) == ["attention", "mlp"]
    gpt2 = ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert FLEX_TYPE3.unused_patterns(gpt2) == []
    assert FLEX_TYPE3.rank_map(gpt2) == dict(zip(gpt2, [30, 200, 200], strict=True))
    assert FLEX_TYPE3.unused_patterns(LLAMA_ATTENTION) == ["mlp"]
    assert FLEX_TYPE3.unused_patterns(LLAMA_ATTENTION + LLAMA_MLP) == []


def test_parsed_forms() -> None:
    assert RankTier.parse(8) == RankTier(name="r8", default=8)
    assert RankTier.parse("r8") == RankTier.parse("8") == RankTier.uniform(8)
    assert FLEX_TYPE3.name == "attention30-mlp200"
    assert FLEX_TYPE3.default == 30
    assert RankTier.parse({"attention": 30, "mlp": 200, "default": 8}).name == (
        "attention30-mlp200-default8"
    )
    assert RankTier.parse({"mlp": 2, "name": "tiny"}).name == "tiny"
    assert RankTier.parse(FLEX_TYPE3.to_dict()) == FLEX_TYPE3
    assert RankTier.parse(FLEX_TYPE3) is FLEX_TYPE3


def test_max_rank_and_uniformity() -> None:
    assert (FLEX_TYPE3.max_rank, FLEX_TYPE3.is_uniform) == (200, False)
    assert (RankTier.uniform(30).max_rank, RankTier.uniform(30).is_uniform) == (30, True)
    same = RankTier.parse({"attention": 8, "mlp": 8, "default": 8})
    assert same.is_uniform
    assert RankTier.from_patterns({"mlp": 4}, default=64).max_rank == 64


def test_equality_includes_pattern_order() -> None:
    a = RankTier(name="t", default=1, patterns={"attention": 2, "mlp": 3})
    b = RankTier(name="t", default=1, patterns={"mlp": 3, "attention": 2})
    assert a != b
    assert a == RankTier(name="t", default=1, patterns={"attention": 2, "mlp": 3})
    assert len({a, b, RankTier(name="t", default=1, patterns={"attention": 2, "mlp": 3})}) == 2


def test_tier_is_immutable() -> None:
    patterns = {"attention": 30}
    tier = RankTier.from_patterns(patterns)
    patterns["mlp"] = 200
    assert dict(tier.patterns) == {"attention": 30}
    with pytest.raises(TypeError):
        tier.patterns["mlp"] = 200  # type: ignore[index]


def test_json_and_toml_round_trip() -> None:
    tier = RankTier.from_patterns({"attention": 30, r"layers\.1\d\.mlp": 64, "mlp": 200}, default=4)
    assert RankTier.from_dict(json.loads(json.dumps(tier.to_dict()))) == tier
    toml_text = tomli_w.dumps({"tier": tier.to_dict()})
    assert RankTier.from_dict(tomllib.loads(toml_text)["tier"]) == tier
    assert list(RankTier.from_dict(tomllib.loads(toml_text)["tier"]).patterns) == list(
        tier.patterns
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "rank must be a positive integer rank, got 0"),
        (True, "must be a rank or a tier mapping"),
        (2.5, "must be a rank or a tier mapping, got float"),
        ("rank8", "must be a rank such as 8"),
        ({"attention": 0}, "pattern 'attention'"),
        ({"att[": 4}, "nor a valid regular expression"),
        ({"default": 4}, "names no module pattern"),
        ({"attention": 4, "default": -1}, "default must be a positive integer rank"),
        ({"patterns": {}, "default": 4, "extra": 1}, "unknown key 'extra'"),
        ({"patterns": {}}, "missing the key 'default'"),
    ],
)
def test_bad_config_values_are_one_line_config_errors(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^rank") as info:
        RankTier.parse(value, "rank")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_aliases_are_documented_names() -> None:
    assert set(GROUP_ALIASES) == {"attention", "mlp"}


pattern_keys = st.sampled_from(
    ["attention", "mlp", "q_proj", r"layers\.0\.", "lin1|lin2", "dense$"]
)
ranks = st.integers(min_value=1, max_value=512)


@given(
    patterns=st.dictionaries(pattern_keys, ranks, max_size=4),
    default=ranks,
    names=st.lists(
        st.sampled_from(BERT_ATTENTION + BERT_MLP + LLAMA_ATTENTION + LLAMA_MLP + NEITHER),
        max_size=10,
    ),
)
def test_rank_map_is_first_match_else_default(
    patterns: dict[str, int], default: int, names: list[str]
) -> None:
    tier = RankTier(name="t", default=default, patterns=patterns)
    expected = {
        name: next(
            (r for p, r in patterns.items() if re.search(GROUP_ALIASES.get(p, p), name)), default
        )
        for name in names
    }
    assert tier.rank_map(names) == expected
    assert all(1 <= r <= tier.max_rank for r in tier.rank_map(names).values())
    assert RankTier.from_dict(json.loads(json.dumps(tier.to_dict()))) == tier


def test_capped_rank_map_cuts_only_the_layers_too_narrow_for_the_rank() -> None:
    # SmolLM2-135M: 576-wide attention, 192-wide key/value projections, 1536-wide MLP.
    q, k, v = (f"model.layers.0.self_attn.{n}_proj" for n in "qkv")
    up = "model.layers.0.mlp.up_proj"
    shapes = {q: (576, 576), k: (192, 576), v: (192, 576), up: (1536, 576)}
    assert RankTier.uniform(200).capped_rank_map(shapes) == {q: 200, k: 192, v: 192, up: 200}
    assert FLEX_TYPE3.capped_rank_map(shapes) == FLEX_TYPE3.rank_map(shapes)
    assert RankTier.uniform(600).capped_rank_map({up: (1536, 576), k: (576, 192)}) == {
        up: 576,
        k: 192,
    }
