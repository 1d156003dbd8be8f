"""FedIT, zero padding, HetLoRA, replication, FFA-LoRA and FLoRA against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from fedlora.aggregation import get_aggregator, norm_weights, self_pruning_penalty, update_norm
from fedlora.errors import FedloraError
from fedlora.lora import ClientUpdate, LoraFactors, LoraSettings
from tests.aggregation.builders import (
    DTYPE,
    average_delta,
    initial,
    make_update,
    masked_mean,
    rounds,
    weights_of,
)


def _folded_sum(updates: list[ClientUpdate], module: str, which: str) -> torch.Tensor:
    weights = weights_of(updates)
    pairs = zip(weights, updates, strict=True)
    parts = [w * getattr(u.modules[module].folded(), which) for w, u in pairs]
    return torch.stack(parts).sum(0)


@given(rounds(equal_ranks=True))
def test_fedit_is_fedavg_of_the_folded_factors(case) -> None:  # type: ignore[no-untyped-def]
    shapes, updates = case
    state = get_aggregator("fedit").aggregate(updates, initial(shapes))
    for name in shapes:
        torch.testing.assert_close(state.modules[name].A, _folded_sum(updates, name, "A"))
        torch.testing.assert_close(state.modules[name].B, _folded_sum(updates, name, "B"))


def test_fedit_refuses_mixed_ranks() -> None:
    shapes = {"m": (6, 6)}
    updates = [make_update(0, shapes, 2, seed=0), make_update(1, shapes, 3, seed=1)]
    with pytest.raises(FedloraError, match=r"fedit needs equal ranks.*'m'.*\[2, 3\]"):
        get_aggregator("fedit").aggregate(updates, initial(shapes))


@given(seed=st.integers(0, 10_000), p=st.floats(0.1, 0.9))
def test_fedit_differs_from_flexlora_by_the_cross_term(seed: int, p: float) -> None:
    shapes = {"m": (7, 6)}
    sizes = (round(p * 1000), 1000 - round(p * 1000))
    updates = [
        make_update(0, shapes, 2, seed=seed, num_examples=sizes[0]),
        make_update(1, shapes, 2, seed=seed + 1, num_examples=sizes[1]),
    ]
    fedit = get_aggregator("fedit").aggregate(updates, initial(shapes)).delta("m")
    flex = get_aggregator("flexlora", max_rank=4).aggregate(updates, initial(shapes)).delta("m")
    p1, p2 = weights_of(updates)
    f1, f2 = (u.modules["m"].folded() for u in updates)
    cross = p1 * p2 * (f1.B - f2.B) @ (f1.A - f2.A)
    torch.testing.assert_close(flex - fedit, cross)
    assert torch.linalg.matrix_norm(cross) > 0


@given(k=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_zero_padding_dilutes_a_lone_high_rank_slot_to_one_over_k(k: int, seed: int) -> None:
    shapes = {"m": (6, 5)}
    high = make_update(0, shapes, 4, seed=seed)
    lows = [make_update(1 + i, shapes, 2, seed=seed + 1 + i) for i in range(k - 1)]
    state = get_aggregator("zero_padding", weighting="uniform").aggregate(
        [high, *lows], initial(shapes)
    )
    folded = high.modules["m"].folded()
    torch.testing.assert_close(state.modules["m"].A[2:4], folded.A[2:4] / k)
    torch.testing.assert_close(state.modules["m"].B[:, 2:4], folded.B[:, 2:4] / k)


@given(rounds(min_clients=2))
def test_replication_equals_slotwise_masked_mean(case) -> None:  # type: ignore[no-untyped-def]
    shapes, updates = case
    state = get_aggregator("replication").aggregate(updates, initial(shapes))
    for name in shapes:
        A, B = masked_mean(updates, name, weights_of(updates))
        torch.testing.assert_close(state.modules[name].A, A)
        torch.testing.assert_close(state.modules[name].B, B)


@given(k=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_replication_keeps_a_lone_slot_and_averages_shared_ones(k: int, seed: int) -> None:
    shapes = {"m": (6, 5)}
    high = make_update(0, shapes, 4, seed=seed, num_examples=3)
    lows = [make_update(1 + i, shapes, 2, seed=seed + 1 + i) for i in range(k - 1)]
    updates = [high, *lows]
    state = get_aggregator("replication").aggregate(updates, initial(shapes))
    folded = high.modules["m"].folded()
    torch.testing.assert_close(state.modules["m"].A[2:4], folded.A[2:4])
    torch.testing.assert_close(state.modules["m"].B[:, 2:4], folded.B[:, 2:4])
    truncated = [
        ClientUpdate(
            u.client_id,
            {"m": LoraFactors(f.A[:2], f.B[:, :2], f.alpha * 2 / f.r, 2)},
            u.num_examples,
        )
        for u in updates
        for f in [u.modules["m"]]
    ]
    fedit = get_aggregator("fedit").aggregate(truncated, initial(shapes))
    torch.testing.assert_close(state.modules["m"].A[:2], fedit.modules["m"].A)
    torch.testing.assert_close(state.modules["m"].B[:, :2], fedit.modules["m"].B)


@given(rounds(equal_ranks=True, min_clients=2))
def test_replication_equals_fedit_when_ranks_are_equal(case) -> None:  # type: ignore[no-untyped-def]
    shapes, updates = case
    rep = get_aggregator("replication").aggregate(updates, initial(shapes))
    fedit = get_aggregator("fedit").aggregate(updates, initial(shapes))
    for name in shapes:
        torch.testing.assert_close(rep.modules[name].A, fedit.modules[name].A)
        torch.testing.assert_close(rep.modules[name].B, fedit.modules[name].B)


def test_replication_keeps_previous_slots_no_participant_owns() -> None:
    shapes = {"m": (8, 8)}
    first = get_aggregator("replication").aggregate(
        [make_update(0, shapes, 6, seed=0)], initial(shapes)
    )
    lows = [make_update(1, shapes, 2, seed=1)]
    kept = get_aggregator("replication").aggregate(lows, first)
    assert kept.rank_map() == {"m": 6}
    torch.testing.assert_close(kept.modules["m"].A[2:], first.modules["m"].A[2:])
    torch.testing.assert_close(kept.modules["m"].B[:, 2:], first.modules["m"].B[:, 2:])
    dropped = get_aggregator("replication", keep_unowned_slots=False).aggregate(lows, first)
    assert dropped.rank_map() == {"m": 2}


@given(rounds(min_clients=2))
def test_hetlora_weights_are_normalised_update_norms(case) -> None:  # type: ignore[no-untyped-def]
    shapes, updates = case
    name = next(iter(shapes))
    folded = [u.modules[name].folded() for u in updates]
    norms = torch.stack([torch.linalg.matrix_norm(f.B @ f.A) for f in folded])
    for f, n in zip(folded, norms, strict=True):
        torch.testing.assert_close(update_norm(f), n)
    weights = norm_weights(folded, fallback=torch.full((len(folded),), 1 / len(folded)))
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=weights.dtype))
    torch.testing.assert_close(weights, (norms / norms.sum()).to(weights.dtype))
    state = get_aggregator("hetlora").aggregate(updates, initial(shapes))
    rank = max(f.rank for f in folded)
    expected_A = sum(
        w * torch.cat([f.A, torch.zeros(rank - f.rank, f.in_features, dtype=DTYPE)])
        for w, f in zip(weights, folded, strict=True)
    )
    torch.testing.assert_close(state.modules[name].A, expected_A)


def test_hetlora_falls_back_to_data_weights_for_all_zero_updates() -> None:
    zero = [
        ClientUpdate(c, {"m": LoraFactors(torch.zeros(2, 4), torch.zeros(4, 2), 8.0, 2)}, n)
        for c, n in [(0, 1), (1, 3)]
    ]
    fallback = torch.tensor([0.25, 0.75], dtype=torch.float64)
    folded = [u.modules["m"].folded() for u in zero]
    torch.testing.assert_close(norm_weights(folded, fallback=fallback), fallback)


@given(gamma=st.floats(0.3, 1.0), lam=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_self_pruning_penalty_matches_definition_and_has_gradients(
    gamma: float, lam: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(8, 5, generator=g, dtype=DTYPE, requires_grad=True)
    B = torch.randn(6, 8, generator=g, dtype=DTYPE, requires_grad=True)
    keep = math.floor(gamma * 8)
    value = self_pruning_penalty([(A, B)], gamma=gamma, lam=lam)
    expected = lam * torch.linalg.matrix_norm(B[:, keep:]) * torch.linalg.matrix_norm(A[keep:])
    torch.testing.assert_close(value, expected)
    assume(lam > 0 and keep < 8)
    torch.autograd.backward(value)  # Tensor.backward is unannotated; this is what it calls
    assert A.grad is not None
    assert B.grad is not None
    assert torch.count_nonzero(A.grad[keep:]) > 0
    assert torch.count_nonzero(A.grad[:keep]) == 0
    assert torch.count_nonzero(B.grad[:, keep:]) > 0


@pytest.mark.parametrize(("gamma", "lam"), [(0.0, 0.1), (1.5, 0.1), (0.5, -1.0)])
def test_self_pruning_penalty_rejects_bad_options(gamma: float, lam: float) -> None:
    with pytest.raises(FedloraError, match="hetlora"):
        self_pruning_penalty([(torch.ones(2, 2), torch.ones(2, 2))], gamma=gamma, lam=lam)


@given(rounds())
def test_flora_stacking_is_exact(case) -> None:  # type: ignore[no-untyped-def]
    shapes, updates = case
    state = get_aggregator("flora").aggregate(updates, initial(shapes))
    for name in shapes:
        merged = state.merge_into_base[name]
        assert merged.rank == sum(u.modules[name].r for u in updates)
        torch.testing.assert_close(merged.delta(), average_delta(updates, name))
        assert state.modules[name].rank == 0
    served = state.factors_for({n: min(s) for n, s in shapes.items()}, LoraSettings(16.0))
    assert all(torch.count_nonzero(f.B) == 0 for f in served.values())


def test_flora_reinitialises_A_each_round() -> None:
    shapes = {"m": (6, 6)}
    agg = get_aggregator("flora")
    first = agg.aggregate([make_update(0, shapes, 2, seed=0)], initial(shapes))
    second = agg.aggregate([make_update(0, shapes, 2, seed=1)], first)
    a1 = first.factors_for(2, LoraSettings(8.0))["m"].A
    a2 = second.factors_for(2, LoraSettings(8.0))["m"].A
    assert not torch.allclose(a1, a2)


def _ffa_round(
    shapes: dict[str, tuple[int, int]], ranks: list[int], seed: int
) -> list[ClientUpdate]:
    """Clients that kept the served A frozen and trained only B."""
    served_state = initial(shapes, seed=seed)
    g = torch.Generator().manual_seed(seed)
    updates = []
    for k, r in enumerate(ranks):
        served = served_state.factors_for(r, LoraSettings(16.0))["m"]
        B = torch.randn(served.B.shape, generator=g, dtype=DTYPE)
        updates.append(ClientUpdate(k, {"m": LoraFactors(served.A, B, 16.0, r)}, 5 + k))
    return updates


@given(ranks=st.lists(st.integers(1, 6), min_size=1, max_size=5), seed=st.integers(0, 1000))
def test_ffa_averaging_B_is_exact_for_a_shared_A(ranks: list[int], seed: int) -> None:
    shapes = {"m": (7, 6)}
    updates = _ffa_round(shapes, ranks, seed)
    state = get_aggregator("ffa").aggregate(updates, initial(shapes, seed=seed))
    torch.testing.assert_close(state.delta("m"), average_delta(updates, "m"))


def test_ffa_rejects_a_client_that_trained_A() -> None:
    shapes = {"m": (7, 6)}
    updates = _ffa_round(shapes, [3, 3], seed=0)
    moved = updates[1].modules["m"]
    updates[1] = ClientUpdate(
        1, {"m": LoraFactors(moved.A + 0.1, moved.B, moved.alpha, moved.r)}, 3
    )
    with pytest.raises(FedloraError, match="changed the frozen A"):
        get_aggregator("ffa").aggregate(updates, initial(shapes))


def test_dense_tensors_are_averaged_with_data_weights() -> None:
    shapes = {"m": (4, 4)}
    dense = {"classifier.weight": (3, 4), "classifier.bias": (3,)}
    updates = [
        make_update(k, shapes, 2, seed=k, num_examples=n, dense_shapes=dense)
        for k, n in enumerate([1, 2, 7])
    ]
    start = initial(shapes, dense={k: torch.zeros(s, dtype=DTYPE) for k, s in dense.items()})
    for name in ("fedit", "zero_padding", "hetlora", "replication", "flexlora", "flora"):
        state = get_aggregator(name).aggregate(updates, start)
        for key in dense:
            expected = sum(n / 10 * u.dense[key] for n, u in zip([1, 2, 7], updates, strict=True))
            torch.testing.assert_close(state.dense[key], expected)


def test_uniform_weighting_ignores_data_sizes() -> None:
    shapes = {"m": (4, 4)}
    updates = [
        make_update(0, shapes, 2, seed=0, num_examples=1),
        make_update(1, shapes, 2, seed=1, num_examples=99),
    ]
    state = get_aggregator("fedit", weighting="uniform").aggregate(updates, initial(shapes))
    expected = 0.5 * (updates[0].modules["m"].folded().A + updates[1].modules["m"].folded().A)
    torch.testing.assert_close(state.modules["m"].A, expected)


@pytest.mark.parametrize("rank", [2, 5, 8, 20, 64])
def test_self_pruning_penalty_is_active_at_the_default_gamma(rank: int) -> None:
    g = torch.Generator().manual_seed(rank)
    A = torch.randn(rank, 6, generator=g, dtype=DTYPE)
    B = torch.randn(6, rank, generator=g, dtype=DTYPE)
    assert self_pruning_penalty([(A, B)], gamma=0.99, lam=1e-3) > 0
