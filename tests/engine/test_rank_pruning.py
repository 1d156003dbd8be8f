"""HetLoRA's rank self-pruning end to end: the client sends fewer slots, the driver accepts them
only from a method that prunes, serves the pruned rank from then on, logs and checkpoints it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from fedlora.aggregation import Aggregator
from fedlora.aggregation.hetlora import keep_slots
from fedlora.engine import (
    ClientReply,
    InProcessTransport,
    RoundDriver,
    TrainTask,
    build_experiment,
    run_experiment,
    sample_clients,
)
from fedlora.lora import ClientUpdate, LoraFactors
from fedlora.runs import RunDir, load_checkpoint
from tests.engine.helpers import tiny_config

pytestmark = pytest.mark.slow

PRUNING = {"aggregation.method": "hetlora", "aggregation.options": {"gamma": 0.5, "prune_tol": 1.0}}
"""Every trained slot carries some of the update, so with ``prune_tol = 1`` every client halves
its rank after every round (down to 1)."""


def _ranks(factors: dict[str, LoraFactors] | Any) -> dict[str, int]:
    return {name: f.r for name, f in factors.items()}


def _per_module(names: Sequence[str], query: int, value: int) -> dict[str, int]:
    return {n: query if n.endswith("query") else value for n in names}


class HandBuiltClients:
    """Clients that "train" by setting every ``B`` entry to 0.1, or, for the ``emptied`` ones,
    only the first half of the slots (the rest stay exactly zero, as if HetLoRA's regulariser had
    emptied them).  Each sends what the method's :meth:`Aggregator.prune` keeps, as the real
    client trainer does, and the ranks it was served are recorded by ``(round, client)``."""

    def __init__(self, aggregator: Aggregator, emptied: set[int]) -> None:
        self.aggregator = aggregator
        self.emptied = emptied
        self.served: dict[tuple[int, int], dict[str, int]] = {}

    def train(self, task: TrainTask) -> ClientReply:
        self.served[(task.round, task.client)] = _ranks(task.factors)
        modules = {}
        for name, factors in task.factors.items():
            B = torch.full_like(factors.B, 0.1)
            if task.client in self.emptied:
                B[:, factors.r // 2 :] = 0.0
            modules[name] = replace(factors, B=B)
        update = ClientUpdate(task.client, modules, 10, dict(task.dense))
        return ClientReply(task.client, self.aggregator.prune(update), train_loss=1.0, steps=1)


def test_the_driver_serves_each_client_the_rank_it_pruned_to(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    per_module = {"query": 8, "value": 4}
    config = tiny_config(
        tiny_bert_dir,
        tmp_path / "run",
        **{
            "aggregation.method": "hetlora",
            "aggregation.options": {"gamma": 0.5, "prune_tol": 0.01},
            "run.rounds": 4,
            "ranks.options": {"ranks": [2, 4, per_module, 2, 4, 8]},
        },
    )
    assert [sample_clients(0, r, 6, 3) for r in (1, 2, 3, 4)] == [
        [3, 4, 5],
        [1, 2, 5],
        [0, 1, 2],
        [1, 2, 4],
    ]
    experiment = build_experiment(config)
    names = experiment.module_names
    clients = HandBuiltClients(experiment.aggregator, emptied={2, 4, 5})
    driver = RoundDriver(experiment, RunDir.create(tmp_path / "run", config, overwrite=False))
    rows = driver.run(InProcessTransport(clients)).metrics

    def u(rank: int) -> dict[str, int]:
        return dict.fromkeys(names, rank)

    def qv(query: int, value: int) -> dict[str, int]:
        return _per_module(names, query, value)

    # Clients 2, 4 and 5 halve their rank each time they train; 0, 1 and 3 never prune.
    assert clients.served == {
        (1, 3): u(2),
        (1, 4): u(4),
        (1, 5): u(8),
        (2, 1): u(4),
        (2, 2): qv(8, 4),
        (2, 5): u(4),
        (3, 0): u(2),
        (3, 1): u(4),
        (3, 2): qv(4, 2),
        (4, 1): u(4),
        (4, 2): qv(2, 1),
        (4, 4): u(2),
    }
    assert [row.extra.get("pruned") for row in rows[1:]] == [
        {"4": u(2), "5": u(4)},
        {"2": qv(4, 2), "5": u(2)},
        {"2": qv(2, 1)},
        {"2": u(1), "4": u(1)},
    ]
    assert [row.ranks for row in rows[1:]] == [[2, 4, 8], [4, 8, 4], [2, 4, 4], [4, 2, 2]]
    assert [row.extra["tiers"] for row in rows[1:]] == [
        ["r2", "r4", "r8"],
        ["r4", "query8-value4", "r8 pruned to r4"],
        ["r2", "r4", "query8-value4 pruned to r2-4"],
        ["r4", "query8-value4 pruned to r1-2", "r4 pruned to r2"],
    ]
    assert all(row.extra["dropped"] == [] for row in rows[1:])
    saved = load_checkpoint(tmp_path / "run" / "checkpoint").extra["pruned"]
    assert saved == {
        "2": {"from": qv(8, 4), "ranks": u(1)},
        "4": {"from": u(4), "ranks": u(1)},
        "5": {"from": u(8), "ranks": u(2)},
    }


def test_a_client_sends_the_first_slots_of_what_it_trained(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    for tol, expected in [(1.0, (2, 4)), (0.0, (4, 8))]:
        options = {"gamma": 0.5, "prune_tol": tol}
        config = tiny_config(
            tiny_bert_dir,
            tmp_path / str(tol),
            **{"aggregation.method": "hetlora", "aggregation.options": options},
        )
        experiment = build_experiment(config)
        state = experiment.initial_state()
        served = _per_module(experiment.module_names, 4, 8)
        factors = state.factors_for(served, config.model.lora_settings())
        reply = experiment.client_trainer().train(
            TrainTask(client=1, round=1, factors=factors, dense=state.dense)
        )
        assert reply.update is not None
        assert _ranks(reply.update.modules) == _per_module(experiment.module_names, *expected)
        trained = experiment.model.extract(1, 1).modules
        assert _ranks(trained) == served
        for name, sent in reply.update.modules.items():
            kept = keep_slots(trained[name], sent.r)
            assert torch.equal(sent.A, kept.A) and torch.equal(sent.B, kept.B), name


class ResizingTransport(InProcessTransport):
    """Trains in process, then one client sends one slot fewer (``-1``) or more (``+1``)."""

    def __init__(self, inner: InProcessTransport, client: int, change: int) -> None:
        super().__init__(inner.runner)
        self.client = client
        self.change = change

    def train(self, tasks: Iterable[TrainTask]) -> Iterator[ClientReply]:
        for reply in super().train(tasks):
            yield self._resized(reply) if reply.client == self.client else reply

    def _resized(self, reply: ClientReply) -> ClientReply:
        assert reply.update is not None
        modules = {n: self._resize(f) for n, f in reply.update.modules.items()}
        return replace(reply, update=replace(reply.update, modules=modules))

    def _resize(self, factors: LoraFactors) -> LoraFactors:
        if self.change < 0:
            return keep_slots(factors, factors.r - 1)
        A = torch.cat([factors.A, torch.zeros(1, factors.A.shape[1])])
        B = torch.cat([factors.B, torch.zeros(factors.B.shape[0], 1)], dim=1)
        return replace(factors, A=A, B=B, r=factors.r + 1)


@pytest.mark.parametrize(
    ("method", "options", "change", "accepted"),
    [
        ("flexlora", {}, -1, False),
        ("hetlora", {}, -1, False),  # HetLoRA without a pruning tolerance does not prune
        ("hetlora", {"prune_tol": 1e-9}, -1, True),
        ("hetlora", {"prune_tol": 1e-9}, +1, False),
        ("flexlora", {}, +1, False),
    ],
)
def test_a_smaller_rank_only_from_a_method_that_prunes_and_never_a_larger_one(
    tiny_bert_dir: Path,
    tmp_path: Path,
    method: str,
    options: dict[str, Any],
    change: int,
    accepted: bool,
) -> None:
    config = tiny_config(
        tiny_bert_dir,
        tmp_path / "run",
        **{"run.rounds": 1, "aggregation.method": method, "aggregation.options": options},
    )
    experiment = build_experiment(config)
    driver = RoundDriver(experiment, RunDir.create(tmp_path / "run", config, overwrite=False))
    inner = InProcessTransport(experiment.client_trainer(driver.base))
    row = driver.run(ResizingTransport(inner, client=5, change=change)).metrics[1]
    assert row.clients == [3, 4, 5] and row.ranks == [2, 4, 8]
    sent = 8 + change
    if accepted:
        assert row.extra["dropped"] == []
        assert row.extra["pruned"] == {"5": dict.fromkeys(experiment.module_names, sent)}
        assert driver.served_ranks(5, experiment.policy.tier_of(5)) == dict.fromkeys(
            experiment.module_names, sent
        )
    else:
        first = experiment.module_names[0]
        assert row.extra["dropped"] == [
            f"client 5: module {first!r}: rank {sent} but it was served rank 8"
        ]
        assert "pruned" not in row.extra
        assert driver.served_ranks(5, experiment.policy.tier_of(5)) == dict.fromkeys(
            experiment.module_names, 8
        )


class KilledRunError(Exception):
    pass


def test_a_resumed_run_serves_the_ranks_pruned_before_the_kill(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    settings = {**PRUNING, "model.lora_dropout": 0.1}
    straight_config = tiny_config(tiny_bert_dir, tmp_path / "straight", **settings)
    straight = run_experiment(
        build_experiment(straight_config),
        RunDir.create(tmp_path / "straight", straight_config, overwrite=False),
    )
    # Round 3 trains clients 0, 1, 2: clients 1 and 2 pruned in round 2, before the kill.
    assert straight.metrics[3].clients == [0, 1, 2]
    assert straight.metrics[3].ranks == [2, 2, 4]
    config = tiny_config(tiny_bert_dir, tmp_path / "killed", **settings)

    def kill(row: Any) -> None:
        if row.round == 2:
            raise KilledRunError

    with pytest.raises(KilledRunError):
        run_experiment(
            build_experiment(config),
            RunDir.create(tmp_path / "killed", config, overwrite=False),
            on_round=kill,
        )
    resumed = run_experiment(build_experiment(config), RunDir(tmp_path / "killed"), resume=True)
    for a, b in zip(resumed.metrics, straight.metrics, strict=True):
        assert (a.round, a.clients, a.ranks, a.train_loss, a.test_loss) == (
            b.round,
            b.clients,
            b.ranks,
            b.train_loss,
            b.test_loss,
        )
        assert a.extra.get("pruned") == b.extra.get("pruned")
        assert a.extra.get("tiers") == b.extra.get("tiers")
    for name, factors in straight.state.modules.items():
        assert torch.equal(resumed.state.modules[name].A, factors.A), name
        assert torch.equal(resumed.state.modules[name].B, factors.B), name
