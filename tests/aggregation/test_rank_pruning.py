"""HetLoRA's rank self-pruning on the client: which modules of which clients prune, how far."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedlora.aggregation import available_aggregators, get_aggregator
from fedlora.aggregation.hetlora import keep_slots, pruned_rank
from fedlora.errors import FedloraError
from fedlora.lora import ClientUpdate, LoraFactors
from tests.aggregation.builders import DTYPE


def _factors(r: int, tail: float, *, seed: int = 0, alpha: float = 16.0) -> LoraFactors:
    """Random rank-``r`` factors whose slots past ``r // 2`` are scaled by ``tail``."""
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(r, 10, generator=generator, dtype=DTYPE)
    B = torch.randn(12, r, generator=generator, dtype=DTYPE)
    B[:, r // 2 :] *= tail
    return LoraFactors(A=A, B=B, alpha=alpha, r=r)


def _ranks(update: ClientUpdate) -> dict[str, int]:
    return {name: f.r for name, f in update.modules.items()}


def test_only_the_modules_whose_trailing_slots_are_near_zero_are_pruned() -> None:
    hetlora = get_aggregator("hetlora", gamma=0.5, prune_tol=0.01)
    clients = {
        "emptied": {"attn": _factors(8, 1e-6), "mlp": _factors(4, 1e-6, seed=1)},
        "mixed": {"attn": _factors(8, 1e-6, seed=2), "mlp": _factors(4, 1.0, seed=3)},
        "full": {"attn": _factors(8, 1.0, seed=4), "mlp": _factors(4, 1.0, seed=5)},
    }
    sent = {
        c: _ranks(hetlora.prune(ClientUpdate(k, m, 10))) for k, (c, m) in enumerate(clients.items())
    }
    assert sent == {
        "emptied": {"attn": 4, "mlp": 2},
        "mixed": {"attn": 4, "mlp": 4},
        "full": {"attn": 8, "mlp": 4},
    }


@given(
    r=st.integers(1, 16),
    gamma=st.floats(0.05, 1.0),
    tol=st.floats(0.0, 1.0),
    tail=st.sampled_from([0.0, 1e-4, 0.05, 0.3, 1.0]),
    seed=st.integers(0, 1000),
)
def test_pruned_rank_follows_its_definition(
    r: int, gamma: float, tol: float, tail: float, seed: int
) -> None:
    factors = _factors(r, tail, seed=seed)
    keep = max(1, math.floor(gamma * r))
    delta = factors.B @ factors.A
    trailing = factors.B[:, keep:] @ factors.A[keep:]
    prunes = torch.linalg.matrix_norm(trailing) < tol * torch.linalg.matrix_norm(delta)
    assert pruned_rank(factors, gamma, tol) == (keep if prunes else r)
    assert pruned_rank(factors, gamma, tol) >= 1


def test_a_rank_never_goes_below_one() -> None:
    one = LoraFactors(A=torch.ones(1, 3), B=torch.ones(3, 1), alpha=8.0, r=1)
    assert pruned_rank(one, gamma=0.1, tol=1.0) == 1
    two = LoraFactors(A=torch.ones(2, 3), B=torch.tensor([[1.0, 0.0]] * 3), alpha=8.0, r=2)
    assert pruned_rank(two, gamma=0.1, tol=1.0) == 1


def test_tolerance_zero_and_a_zero_update_never_prune() -> None:
    empty_tail = _factors(8, 0.0)
    assert pruned_rank(empty_tail, gamma=0.5, tol=0.0) == 8
    assert pruned_rank(empty_tail, gamma=0.5, tol=1e-9) == 4
    zero = LoraFactors(A=torch.randn(8, 10), B=torch.zeros(12, 8), alpha=16.0, r=8)
    assert pruned_rank(zero, gamma=0.5, tol=1.0) == 8


@given(
    r=st.integers(2, 12),
    keep=st.integers(1, 12),
    alpha=st.sampled_from([1.0, 16.0, 32.0]),
    rslora=st.booleans(),
)
def test_kept_slots_keep_their_effective_update(
    r: int, keep: int, alpha: float, rslora: bool
) -> None:
    keep = min(keep, r)
    generator = torch.Generator().manual_seed(r * 100 + keep)
    A = torch.randn(r, 7, generator=generator, dtype=DTYPE)
    B = torch.randn(9, r, generator=generator, dtype=DTYPE)
    factors = LoraFactors(A=A, B=B, alpha=alpha, r=r, use_rslora=rslora)
    kept = keep_slots(factors, keep)
    assert (kept.r, kept.alpha, kept.use_rslora) == (keep, alpha, rslora)
    assert kept.A.shape == (keep, 7) and kept.B.shape == (9, keep)
    expected = factors.scale * B[:, :keep] @ A[:keep]
    torch.testing.assert_close(kept.delta(), expected)


def test_pruning_is_off_unless_a_tolerance_is_given() -> None:
    update = ClientUpdate(0, {"m": _factors(8, 0.0)}, 10)
    assert not get_aggregator("hetlora").prunes_ranks
    assert get_aggregator("hetlora").prune(update) is update
    assert get_aggregator("hetlora", prune_tol=0.1).prunes_ranks
    assert _ranks(get_aggregator("hetlora", prune_tol=0.1).prune(update)) == {"m": 7}


@pytest.mark.parametrize("name", sorted(set(available_aggregators()) - {"hetlora"}))
def test_other_methods_send_their_whole_update(name: str) -> None:
    aggregator = get_aggregator(name)
    update = ClientUpdate(0, {"m": _factors(8, 0.0)}, 10)
    assert not aggregator.prunes_ranks
    assert aggregator.prune(update) is update


@pytest.mark.parametrize("tol", [-0.1, math.nan, math.inf])
def test_bad_tolerances_are_refused(tol: float) -> None:
    with pytest.raises(FedloraError, match="prune_tol"):
        get_aggregator("hetlora", prune_tol=tol)
