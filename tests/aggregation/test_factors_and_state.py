"""LoRA settings, scale folding, unfolding for other ranks/alphas, fresh slots, initial state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedlora.aggregation import GlobalState, get_aggregator
from fedlora.config import load_config
from fedlora.errors import ConfigError, FedloraError
from fedlora.lora import FoldedFactors, LoraFactors, LoraSettings, fresh_lora_A, lora_scale
from tests.aggregation.builders import initial, make_update, random_factors


@given(alpha=st.floats(0.5, 64.0), r=st.integers(1, 64), rslora=st.booleans())
def test_lora_scale_matches_peft_definition(alpha: float, r: int, rslora: bool) -> None:
    expected = alpha / math.sqrt(r) if rslora else alpha / r
    assert lora_scale(alpha, r, rslora) == pytest.approx(expected, rel=1e-12)


@given(
    alpha=st.floats(1.0, 64.0),
    r=st.integers(1, 6),
    rslora=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_folded_product_is_the_effective_update(
    alpha: float, r: int, rslora: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    f = random_factors(7, 6, r, alpha=alpha, generator=g, use_rslora=rslora)
    expected = lora_scale(alpha, r, rslora) * (f.B @ f.A)
    torch.testing.assert_close(f.folded().delta(), expected)
    torch.testing.assert_close(f.delta(), expected)


@given(
    alpha=st.floats(1.0, 64.0),
    new_alpha=st.floats(1.0, 64.0),
    rslora=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_unfold_to_another_alpha_keeps_the_update(
    alpha: float, new_alpha: float, rslora: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    f = random_factors(5, 8, 4, alpha=alpha, generator=g)
    served = f.folded().unfold(4, LoraSettings(new_alpha, use_rslora=rslora))
    assert served.alpha == new_alpha
    assert served.use_rslora is rslora
    torch.testing.assert_close(served.delta(), f.delta())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alpha": 0.0}, "alpha must be a positive number"),
        ({"alpha": math.nan}, "alpha must be a positive number"),
        ({"alpha": 16.0, "dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
    ],
)
def test_lora_settings_refuse_impossible_values(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoraSettings(**settings)  # type: ignore[arg-type]


def test_lora_settings_come_from_the_model_section() -> None:
    config = load_config(
        None, ["model.lora_alpha=8.0", "model.use_rslora=true", "model.lora_dropout=0.1"]
    )
    lora = config.model.lora_settings()
    assert lora == LoraSettings(alpha=8.0, use_rslora=True, dropout=0.1)
    assert lora.scale(4) == lora_scale(8.0, 4, True) == 4.0


def test_mixed_ranks_under_fixed_alpha_aggregate_effective_updates() -> None:
    # Two clients with the same alpha but ranks 2 and 8 have scales 8 and 2.  FlexLoRA with enough
    # kept rank reproduces the average of the effective updates exactly, whatever alpha serves it.
    shapes = {"m": (10, 9)}
    low = make_update(0, shapes, 2, seed=1, alpha=16.0, num_examples=1)
    high = make_update(1, shapes, 8, seed=2, alpha=16.0, num_examples=1)
    state = get_aggregator("flexlora", max_rank=9).aggregate([low, high], initial(shapes))
    expected = 0.5 * low.modules["m"].delta() + 0.5 * high.modules["m"].delta()
    torch.testing.assert_close(state.delta("m"), expected)
    for r, alpha in [(9, 16.0), (9, 4.0)]:
        served = state.factors_for({"m": r}, LoraSettings(alpha))["m"]
        torch.testing.assert_close(served.delta(), expected)


def test_initial_state_serves_fresh_slots_with_zero_B() -> None:
    state = GlobalState.initial({"a": (6, 5), "b": (4, 7)}, seed=3)
    factors = state.factors_for({"a": 3, "b": 2}, LoraSettings(16.0))
    assert factors["a"].A.shape == (3, 5)
    assert factors["a"].B.shape == (6, 3)
    assert factors["b"].A.shape == (2, 7)
    assert factors["b"].B.shape == (4, 2)
    assert torch.count_nonzero(factors["a"].B) == 0
    assert torch.all(factors["a"].A.abs() <= 1 / math.sqrt(5))
    assert torch.all(factors["a"].A.abs() > 0)


def test_fresh_slots_agree_across_clients_and_ranks() -> None:
    state = GlobalState.initial({"a": (16, 16)}, seed=7)
    low = state.factors_for(4, LoraSettings(8.0))["a"]
    high = state.factors_for(12, LoraSettings(8.0))["a"]
    torch.testing.assert_close(high.A[:4], low.A)
    again = GlobalState.initial({"a": (16, 16)}, seed=7).factors_for(12, LoraSettings(8.0))["a"]
    torch.testing.assert_close(again.A, high.A)
    other_seed = GlobalState.initial({"a": (16, 16)}, seed=8).factors_for(12, LoraSettings(8.0))[
        "a"
    ]
    assert not torch.allclose(other_seed.A, high.A)


def test_fresh_rows_depend_on_module_and_round() -> None:
    a = fresh_lora_A("x", 8, 3, seed=0, round_index=0, dtype=torch.float32)
    b = fresh_lora_A("y", 8, 3, seed=0, round_index=0, dtype=torch.float32)
    c = fresh_lora_A("x", 8, 3, seed=0, round_index=1, dtype=torch.float32)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, c)


def test_served_factors_beyond_global_rank_keep_the_update() -> None:
    shapes = {"m": (8, 8)}
    update = make_update(0, shapes, 2, seed=0)
    state = get_aggregator("zero_padding").aggregate([update], initial(shapes))
    assert state.rank_map() == {"m": 2}
    served = state.factors_for(6, LoraSettings(16.0))["m"]
    torch.testing.assert_close(served.delta(), update.modules["m"].delta())
    assert torch.count_nonzero(served.B[:, 2:]) == 0
    assert torch.count_nonzero(served.A[2:]) == 4 * 8


@pytest.mark.parametrize("rank", [0, 9])
def test_factors_for_rejects_impossible_ranks(rank: int) -> None:
    state = GlobalState.initial({"m": (9, 8)})
    with pytest.raises(FedloraError, match=r"module 'm': rank .* outside 1\.\.8"):
        state.factors_for(rank, LoraSettings(16.0))


def test_factors_for_needs_every_module_in_a_rank_map() -> None:
    state = GlobalState.initial({"m": (9, 8), "n": (4, 4)})
    with pytest.raises(FedloraError, match="no rank given for module 'n'"):
        state.factors_for({"m": 2}, LoraSettings(16.0))


def test_unfold_refuses_more_slots_than_held() -> None:
    folded = FoldedFactors(A=torch.ones(2, 3), B=torch.ones(4, 2))
    with pytest.raises(ValueError, match="cannot unfold rank 3"):
        folded.unfold(3, LoraSettings(8.0))


def test_lora_factors_rank_property_matches_declared() -> None:
    f = LoraFactors(A=torch.ones(3, 4), B=torch.ones(5, 3), alpha=6.0, r=3)
    assert f.scale == 2.0
    torch.testing.assert_close(f.folded().B, torch.full((5, 3), 2.0))
