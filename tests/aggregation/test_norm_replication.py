"""Norm-weighted replication against its definition: slot-wise means weighted by update norms."""

from __future__ import annotations

import torch
from hypothesis import given

from fedlora.aggregation import get_aggregator
from fedlora.lora import ClientUpdate, LoraFactors
from tests.aggregation.builders import DTYPE, initial, make_update, masked_mean, rounds


def _norms(updates: list[ClientUpdate], module: str) -> list[float]:
    return [float(torch.linalg.matrix_norm(u.modules[module].delta())) for u in updates]


@given(rounds(min_clients=2))
def test_each_slot_is_the_norm_weighted_mean_over_its_owners(case) -> None:  # type: ignore[no-untyped-def]
    shapes, updates = case
    state = get_aggregator("norm_replication").aggregate(updates, initial(shapes))
    for name in shapes:
        A, B = masked_mean(updates, name, _norms(updates, name))
        torch.testing.assert_close(state.modules[name].A, A)
        torch.testing.assert_close(state.modules[name].B, B)


def test_a_three_times_larger_update_counts_three_times_whatever_the_data_sizes() -> None:
    shapes = {"m": (6, 5)}
    high = make_update(0, shapes, 4, seed=0, num_examples=1000)
    low = make_update(1, shapes, 2, seed=1, num_examples=1)
    (norm_high,) = _norms([high], "m")
    (norm_low,) = _norms([low], "m")
    factors = low.modules["m"]
    scaled = LoraFactors(factors.A, factors.B * 3 * norm_high / norm_low, factors.alpha, 2)
    low = ClientUpdate(1, {"m": scaled}, num_examples=1)
    state = get_aggregator("norm_replication").aggregate([high, low], initial(shapes)).modules["m"]
    h, lo = high.modules["m"].folded(), low.modules["m"].folded()
    torch.testing.assert_close(state.A[:2], (h.A[:2] + 3 * lo.A) / 4)
    torch.testing.assert_close(state.B[:, :2], (h.B[:, :2] + 3 * lo.B) / 4)
    torch.testing.assert_close(state.A[2:], h.A[2:])  # owned by one client: its value, undiluted
    torch.testing.assert_close(state.B[:, 2:], h.B[:, 2:])


def test_a_slot_whose_owners_all_sent_zero_updates_takes_their_data_weights() -> None:
    shapes = {"m": (6, 5)}
    generator = torch.Generator().manual_seed(0)
    zero = [
        ClientUpdate(
            c,
            {
                "m": LoraFactors(
                    torch.randn(4, 5, generator=generator, dtype=DTYPE),
                    torch.zeros(6, 4, dtype=DTYPE),
                    16.0,
                    4,
                )
            },
            n,
        )
        for c, n in [(0, 1), (1, 3)]
    ]
    moved = make_update(2, shapes, 2, seed=2, num_examples=50)
    state = get_aggregator("norm_replication").aggregate([*zero, moved], initial(shapes))
    A = state.modules["m"].A
    z1, z3 = (u.modules["m"].A for u in zero)
    torch.testing.assert_close(A[:2], moved.modules["m"].A)  # only "moved" has a norm there
    torch.testing.assert_close(A[2:], (z1[2:] + 3 * z3[2:]) / 4)
    assert torch.isfinite(state.modules["m"].B).all()
