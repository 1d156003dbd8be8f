"""One client cannot poison or stop the federation: huge updates, overflowing weights, bounds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fedlora.aggregation import GlobalState, available_aggregators, get_aggregator
from fedlora.aggregation.robust import bound_updates, lora_norm
from fedlora.errors import FedloraError, InvalidUpdateError
from fedlora.lora import ClientUpdate
from tests.aggregation.builders import ROUND_SHAPES as SHAPES
from tests.aggregation.builders import method_round


def _scaled(update: ClientUpdate, factor: float = 1.0, alpha: float | None = None) -> ClientUpdate:
    modules = {
        n: replace(f, B=f.B * factor, alpha=alpha or f.alpha) for n, f in update.modules.items()
    }
    return replace(update, modules=modules)


def _finite(state: GlobalState) -> bool:
    tensors = [t for f in state.modules.values() for t in (f.A, f.B)]
    tensors += [
        *state.dense.values(),
        *(t for f in state.merge_into_base.values() for t in (f.A, f.B)),
    ]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("method", sorted(available_aggregators()))
@pytest.mark.parametrize(("factor", "alpha"), [(1e15, None), (1e30, None), (1.0, 1e300)])
def test_a_huge_finite_update_never_makes_the_state_non_finite(
    method: str, factor: float, alpha: float | None
) -> None:
    # Either a finite state, or a one-line refusal (the caller then keeps its state).
    updates, state = method_round(method)
    updates[1] = _scaled(updates[1], factor, alpha)
    try:
        result = get_aggregator(method).aggregate(updates, state)
    except FedloraError as error:
        refusal = str(error)
    else:
        assert _finite(result)
        return
    assert "\n" not in refusal and ("not finite" in refusal or "client 1" in refusal), refusal


def test_an_absurd_data_size_is_refused_not_overflowed() -> None:
    updates, state = method_round("flexlora")
    updates[0] = replace(updates[0], num_examples=10**400)
    with pytest.raises(InvalidUpdateError, match=r"client 0: num_examples must be in 1..2\^53"):
        get_aggregator("flexlora").aggregate(updates, state)


def _global_delta(updates: list[ClientUpdate], state: GlobalState) -> dict[str, torch.Tensor]:
    result = get_aggregator("flexlora", max_rank=10).aggregate(updates, state)  # exact: R <= 10
    return {name: result.delta(name) for name in SHAPES}


def test_one_poisoned_client_moves_the_update_by_at_most_its_bound() -> None:
    # With clipping at c times the median norm, client 1's term p_1 s_1 B_1 A_1 of FlexLoRA's
    # sum has norm at most p_1 c median, however large its update.
    updates, state = method_round("flexlora")
    updates[1] = _scaled(updates[1], 1e6)
    bound = 2.0
    median = sorted(lora_norm(u) for u in updates)[1]
    clipped = bound_updates(updates, norm_bound=bound).updates
    silent = [*clipped[:1], _scaled(clipped[1], 0.0), *clipped[2:]]
    moved = _global_delta(clipped, state)
    without = _global_delta(silent, state)
    weight = updates[1].num_examples / sum(u.num_examples for u in updates)
    squared = sum(((moved[n] - without[n]) ** 2).sum() for n in SHAPES)
    assert isinstance(squared, torch.Tensor)  # sum()'s start 0 is left only when SHAPES is empty
    total = torch.sqrt(squared)
    assert float(total) <= weight * bound * median * (1 + 1e-9)
    assert float(total) >= 0.99 * weight * bound * median  # clipped to the bound, not below
    honest = bound_updates([updates[0], updates[2]], norm_bound=bound)
    assert honest.clipped == {} and honest.rejected == {}


def test_reject_drops_the_outlier_and_a_cap_limits_a_claimed_size() -> None:
    updates, _ = method_round("flexlora")
    updates[2] = _scaled(updates[2], 1e6)
    updates[0] = replace(updates[0], num_examples=10**12)
    result = bound_updates(updates, norm_bound=3.0, mode="reject", max_examples=100)
    assert [u.client_id for u in result.updates] == [0, 1]
    assert list(result.rejected) == [2] and result.capped == {0: 10**12}
    assert result.updates[0].num_examples == 100
    off = bound_updates(updates)
    assert off.updates == list(updates) and not (off.clipped or off.rejected or off.capped)
