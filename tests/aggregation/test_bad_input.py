"""Bad client updates: one-line errors naming client and module; the previous state is untouched."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from fedlora.aggregation import GlobalState, available_aggregators, get_aggregator
from fedlora.errors import EmptyRoundError, InvalidUpdateError, UnknownNameError
from fedlora.lora import ClientUpdate, LoraFactors
from tests.aggregation.builders import DTYPE, initial, make_update

SHAPES = {"layer.q": (6, 5), "layer.v": (6, 5)}


def _good(cid: int = 0, seed: int = 0) -> ClientUpdate:
    return make_update(cid, SHAPES, 2, seed=seed, dense_shapes={"head": (3,)})


def _replace(update: ClientUpdate, module: str, **changes: object) -> ClientUpdate:
    f = update.modules[module]
    fields = {"A": f.A, "B": f.B, "alpha": f.alpha, "r": f.r, **changes}
    modules = {**update.modules, module: LoraFactors(**fields)}  # type: ignore[arg-type]
    return ClientUpdate(update.client_id, modules, update.num_examples, update.dense)


def _nan_A(u: ClientUpdate) -> ClientUpdate:
    A = u.modules["layer.v"].A.clone()
    A[0, 0] = math.nan
    return _replace(u, "layer.v", A=A)


def _inf_B(u: ClientUpdate) -> ClientUpdate:
    B = u.modules["layer.v"].B.clone()
    B[1, 1] = math.inf
    return _replace(u, "layer.v", B=B)


CASES: list[tuple[str, Callable[[ClientUpdate], ClientUpdate], str | None, str]] = [
    (
        "missing module",
        lambda u: ClientUpdate(u.client_id, {"layer.q": u.modules["layer.q"]}, 5, u.dense),
        "layer.v",
        "missing from the update",
    ),
    (
        "extra module",
        lambda u: ClientUpdate(
            u.client_id, {**u.modules, "layer.k": u.modules["layer.q"]}, 5, u.dense
        ),
        "layer.k",
        "unexpected LoRA module",
    ),
    (
        "rank contradicts shapes",
        lambda u: _replace(u, "layer.q", r=3),
        "layer.q",
        r"declared rank 3 .* got A\(2, 5\)",
    ),
    (
        "rank above min(in, out)",
        lambda u: _replace(
            u, "layer.q", A=torch.ones(6, 5, dtype=DTYPE), B=torch.ones(6, 6, dtype=DTYPE), r=6
        ),
        "layer.q",
        r"rank 6 exceeds min\(out, in\) = 5",
    ),
    (
        "wrong in_features",
        lambda u: _replace(u, "layer.q", A=torch.ones(2, 4, dtype=DTYPE)),
        "layer.q",
        r"needs A\(2, 5\)",
    ),
    ("NaN in A", _nan_A, "layer.v", "A holds 1 NaN or Inf"),
    ("Inf in B", _inf_B, "layer.v", "B holds 1 NaN or Inf"),
    ("zero alpha", lambda u: _replace(u, "layer.q", alpha=0.0), "layer.q", "alpha must be"),
    (
        "integer factors",
        lambda u: _replace(
            u,
            "layer.q",
            A=torch.ones(2, 5, dtype=torch.int64),
            B=torch.ones(6, 2, dtype=torch.int64),
        ),
        "layer.q",
        "floating point",
    ),
    (
        "zero weight",
        lambda u: ClientUpdate(u.client_id, u.modules, 0, u.dense),
        None,
        "num_examples must be in 1..2\\^53, got 0",
    ),
    (
        "negative weight",
        lambda u: ClientUpdate(u.client_id, u.modules, -3, u.dense),
        None,
        "num_examples must be in 1..2\\^53, got -3",
    ),
    (
        "dense shape",
        lambda u: ClientUpdate(u.client_id, u.modules, 5, {"head": torch.ones(4, dtype=DTYPE)}),
        "head",
        r"dense tensor has shape \(4,\), expected \(3,\)",
    ),
    (
        "dense NaN",
        lambda u: ClientUpdate(
            u.client_id, u.modules, 5, {"head": torch.tensor([0.0, math.nan, 1.0], dtype=DTYPE)}
        ),
        "head",
        "dense tensor holds 1 NaN",
    ),
]


def _previous() -> GlobalState:
    dense = {"head": torch.zeros(3, dtype=DTYPE)}
    start = initial(SHAPES, dense=dense)
    return get_aggregator("zero_padding").aggregate([_good(0, 1), _good(1, 2)], start)


@pytest.mark.parametrize("aggregator", sorted(available_aggregators()))
@pytest.mark.parametrize(("case", "corrupt", "module", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_update_is_named_and_leaves_previous_state_untouched(
    aggregator: str,
    case: str,
    corrupt: Callable[[ClientUpdate], ClientUpdate],
    module: str | None,
    message: str,
) -> None:
    previous = _previous()
    snapshot = {n: (f.A.clone(), f.B.clone()) for n, f in previous.modules.items()}
    bad = corrupt(_good(7, 9))
    with pytest.raises(InvalidUpdateError, match=message) as caught:
        get_aggregator(aggregator).aggregate([_good(3, 3), bad], previous)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.client_id == 7
    assert error.module == module
    assert "\n" not in str(error)
    assert str(error).startswith("client 7")
    for name, (A, B) in snapshot.items():
        assert torch.equal(previous.modules[name].A, A)
        assert torch.equal(previous.modules[name].B, B)


def test_empty_round_is_an_error() -> None:
    with pytest.raises(EmptyRoundError, match="no client updates"):
        get_aggregator("flexlora").aggregate([], initial(SHAPES))


def test_duplicate_client_in_a_round_is_an_error() -> None:
    with pytest.raises(InvalidUpdateError, match="client 5: appears twice"):
        get_aggregator("fedit").aggregate([_good(5), _good(5, 1)], _previous())


def test_unknown_aggregator_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNameError) as caught:
        get_aggregator("flexlroa")
    message = str(caught.value)
    assert "did you mean 'flexlora'?" in message
    for name in available_aggregators():
        assert name in message


def test_unknown_option_lists_the_valid_options() -> None:
    with pytest.raises(
        ValueError, match=r"aggregator 'replication' has no option 'sigma'; .*keep_unowned_slots"
    ):
        get_aggregator("replication", sigma="B")


def test_registry_holds_the_eight_methods() -> None:
    assert available_aggregators() == [
        "fedit",
        "ffa",
        "flexlora",
        "flora",
        "hetlora",
        "norm_replication",
        "replication",
        "zero_padding",
    ]
    assert get_aggregator("ffa").trains_A is False
    assert get_aggregator("flora").merges_into_base is True
    assert get_aggregator("flexlora", svd="dense").svd == "dense"  # type: ignore[attr-defined]
