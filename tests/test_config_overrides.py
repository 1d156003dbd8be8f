"""``--set`` overrides written by :func:`format_override` read back as the values they came from,
and a run's identity (what its checkpoints are tied to) holds only the values it sets."""

from __future__ import annotations

import tomllib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fedlora.config import ExperimentConfig, format_override, load_config, parse_override

_scalars = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    ),
    max_leaves=8,
)


@given(value=_values)
def test_a_formatted_override_parses_back_to_its_value(value: Any) -> None:
    assert parse_override(format_override("ranks.options", value)) == ("ranks.options", value)


def test_a_tier_with_a_regex_pattern_builds_the_same_config_as_replace() -> None:
    tiers = [8, {"name": "r200-kv192", "default": 200, "patterns": {r"(^|\.)(k|v)_proj$": 192}}]
    options = {"population": "heavy_tail_light", "tiers": tiers}
    overrides = {"ranks.policy": "distribution", "ranks.options": options, "run.seed": 3}
    from_cli = load_config(None, [format_override(k, v) for k, v in overrides.items()])
    assert from_cli == load_config(None).replace(overrides)
    assert from_cli.ranks.options["tiers"][1]["patterns"] == {r"(^|\.)(k|v)_proj$": 192}


def test_a_runs_identity_holds_only_what_differs_from_the_defaults() -> None:
    # A checkpoint is tied to this: a key at its default (or one a later version adds) leaves
    # it unchanged, any other value changes it.
    default = ExperimentConfig()
    assert default.identity_toml() == ""
    assert default.replace({"train.lr": default.train.lr}).identity_toml() == ""
    # How a run executes never changes its numbers, so a run may resume with other values.
    execution = {"run.workers": 2, "run.client_timeout": 30.0, "aggregation.spill": "disk"}
    assert default.replace(execution).identity_toml() == ""
    changed = default.replace({"train.lr": default.train.lr * 2, "run.rounds": 7})
    assert tomllib.loads(changed.identity_toml()) == {
        "train": {"lr": default.train.lr * 2},
        "run": {"rounds": 7},
    }
