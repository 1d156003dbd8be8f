"""Updates spilled to disk aggregate exactly as in memory, one module at a time.

Every aggregator, with and without robust clipping, gives the bit-identical state from updates
read back from their files (:mod:`fedlora.runs.spill`); while it aggregates, the factors of at
most one module are alive at once, and a damaged file is one line naming it.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedlora.aggregation import GlobalState, available_aggregators, get_aggregator
from fedlora.aggregation.robust import bound_updates
from fedlora.errors import FedloraError
from fedlora.lora import ClientUpdate, LoraFactors
from fedlora.runs.spill import (
    SPILL_ABOVE_BYTES,
    FactorFiles,
    SpilledFactors,
    open_update,
    save_update,
    spills,
)
from tests.aggregation.builders import method_round

OPTIONS = {  # every option that changes which tensors a method reads
    "flexlora": {"energy": True},
    "hetlora": {},
}


def _spilled(updates: list[ClientUpdate], directory: Path) -> list[ClientUpdate]:
    return [save_update(u, directory / f"client-{u.client_id}.safetensors") for u in updates]


def _aggregate(
    method: str, updates: list[ClientUpdate], state: GlobalState, into: FactorFiles | None = None
) -> GlobalState:
    bounded = bound_updates(updates, norm_bound=1.0).updates  # clips the larger updates
    return get_aggregator(method, **OPTIONS.get(method, {})).aggregate(
        bounded, state, validated=True, into=into
    )


def _assert_identical(ours: GlobalState, theirs: GlobalState) -> None:
    for part in ("modules", "merge_into_base"):
        mine, other = getattr(ours, part), getattr(theirs, part)
        assert list(mine) == list(other)
        for name, factors in other.items():
            assert torch.equal(mine[name].A, factors.A), (part, name)
            assert torch.equal(mine[name].B, factors.B), (part, name)
    assert list(ours.dense) == list(theirs.dense)
    for name, tensor in theirs.dense.items():
        assert torch.equal(ours.dense[name], tensor), name


@pytest.mark.parametrize("method", sorted(available_aggregators()))
def test_spilled_updates_aggregate_bit_identically(method: str, tmp_path: Path) -> None:
    updates, state = method_round(method)
    in_memory = _aggregate(method, updates, state)
    _assert_identical(_aggregate(method, _spilled(updates, tmp_path), state), in_memory)


@pytest.mark.parametrize("method", sorted(available_aggregators()))
def test_a_state_written_to_disk_as_it_is_combined_is_the_same(method: str, tmp_path: Path) -> None:
    updates, state = method_round(method)
    in_memory = _aggregate(method, updates, state)
    files = FactorFiles(tmp_path / "state")
    on_disk = _aggregate(method, _spilled(updates, tmp_path), state, into=files)
    _assert_identical(on_disk, in_memory)
    result = on_disk.merge_into_base if in_memory.merge_into_base else on_disk.modules
    assert result is files  # FLoRA's result is the merge, its modules fresh
    assert len(list((tmp_path / "state").glob("module-*.safetensors"))) == len(state.modules)


def test_spilled_updates_are_validated_like_in_memory_ones(tmp_path: Path) -> None:
    updates, state = method_round("flexlora")
    flex = get_aggregator("flexlora")
    expected = flex.aggregate(updates, state)
    _assert_identical(flex.aggregate(_spilled(updates, tmp_path), state), expected)


@pytest.mark.parametrize("method", sorted(available_aggregators()))
def test_one_module_is_in_memory_at_a_time(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every module read from a file is watched until freed: when a module is read, no other
    module's factors may still be alive (clipping and FlexLoRA's energy read them too)."""
    updates, state = method_round(method)
    spilled = _spilled(updates, tmp_path)
    alive: list[tuple[str, weakref.ref[torch.Tensor]]] = []
    others_alive: list[set[str]] = []
    read = SpilledFactors.__getitem__

    def watched(self: SpilledFactors, name: str) -> LoraFactors:
        factors = read(self, name)
        others_alive.append({n for n, ref in alive if ref() is not None and n != name})
        alive.extend((name, weakref.ref(t)) for t in (factors.A, factors.B))
        return factors

    monkeypatch.setattr(SpilledFactors, "__getitem__", watched)
    _aggregate(method, spilled, state)
    assert len(others_alive) >= 2 * len(spilled) * len(state.modules)  # norms, then aggregation
    assert [others for others in others_alive if others] == []


def test_an_update_round_trips_with_its_settings_and_dense_tensors(tmp_path: Path) -> None:
    (update, *_), _ = method_round("flexlora")
    factors = update.modules["enc.q"]
    update = ClientUpdate(
        7, {"enc.q": LoraFactors(factors.A, factors.B, 8.0, factors.r, True)}, 33, update.dense
    )
    save_update(update, tmp_path / "c.safetensors")
    back = open_update(tmp_path / "c.safetensors")
    assert (back.client_id, back.num_examples, list(back.modules)) == (7, 33, ["enc.q"])
    read = back.modules["enc.q"]
    assert (read.alpha, read.r, read.use_rslora) == (8.0, factors.r, True)
    assert torch.equal(read.A, factors.A) and torch.equal(read.B, factors.B)
    assert torch.equal(back.dense["head.weight"], update.dense["head.weight"])


def _damaged(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "garbage", "missing"])
def test_a_damaged_spilled_file_is_one_line_naming_it(tmp_path: Path, how: str) -> None:
    updates, state = method_round("flexlora")
    spilled = _spilled(updates, tmp_path)
    path = tmp_path / "client-1.safetensors"
    _damaged(path, how)
    with pytest.raises(FedloraError) as caught:
        get_aggregator("flexlora").aggregate(spilled, state, validated=True)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"spilled file {path} is unreadable or corrupt: ")
    with pytest.raises(FedloraError, match=f"spilled file {path} "):
        open_update(path)


def test_a_module_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    tensors = {"lora/enc.q/A": torch.zeros(2, 10), "lora/enc.q/B": torch.zeros(12, 2)}
    modules = json.dumps({"enc.q": {"alpha": 16.0, "r": 3, "use_rslora": False}})
    save_file(tensors, str(path), {"client_id": "0", "num_examples": "1", "modules": modules})
    with pytest.raises(FedloraError, match=r"c.safetensors is corrupt: module 'enc.q' has A\(2"):
        open_update(path).modules["enc.q"]


def test_rounds_spill_by_size_unless_told() -> None:
    assert not spills("auto", SPILL_ABOVE_BYTES)
    assert spills("auto", SPILL_ABOVE_BYTES + 1)
    assert spills("disk", 0)
    assert not spills("memory", 10 * SPILL_ABOVE_BYTES)
    with pytest.raises(FedloraError, match=r"aggregation\.spill 'ram' is not one of auto"):
        spills("ram", 0)  # type: ignore[arg-type]
