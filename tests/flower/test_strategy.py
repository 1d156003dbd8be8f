"""FedLoraStrategy with hand-built messages: per-node ranks, every aggregator, faulty replies."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedlora.aggregation import GlobalState, available_aggregators, get_aggregator
from fedlora.config import load_config
from fedlora.engine import sample_clients
from fedlora.flower import client_app
from fedlora.flower.records import (
    ARRAYS,
    CONFIG,
    record_to_factors,
    reply_content,
    update_from_reply,
)
from fedlora.flower.strategy import FedLoraStrategy
from fedlora.lora import ClientUpdate, LoraFactors
from fedlora.ranks import ListRanks, LossBasedRanks

SHAPES = {"enc.0.query": (8, 8), "enc.0.value": (8, 8)}
DENSE = {"classifier.weight": torch.zeros(3, 8), "classifier.bias": torch.zeros(3)}
NUM_CLIENTS = 4
Trainer = Callable[[Message, Context], Message | None]


@pytest.fixture(autouse=True)
def _server_identity() -> None:
    """Flower stamps messages with the running task's identity; fake a ServerApp's."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


class FakeGrid:
    """Routes messages to in-process handlers as Flower would route them to nodes."""

    def __init__(self, node_configs: dict[int, dict[str, Any]], trainer: Trainer) -> None:
        self.node_configs = node_configs
        self.trainer = trainer

    def get_node_ids(self) -> list[int]:
        return list(self.node_configs)

    def send_and_receive(self, messages: Iterable[Message], timeout: float = 0.0) -> list[Message]:
        replies = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            context = Context(
                run_id=1,
                node_id=node_id,
                node_config=self.node_configs[node_id],
                state=RecordDict(),
                run_config={},
            )
            if message.metadata.message_type == MessageType.QUERY:
                replies.append(client_app.identify(message, context))
                continue
            reply = self.trainer(message, context)
            if reply is not None:
                replies.append(reply)
        return replies


def _trained(message: Message, context: Context, **corrupt: Any) -> Message:
    """A client that moves every served factor by a seeded step (optionally corrupting it)."""
    settings = message.content.config_records[CONFIG]
    client = int(settings["client"])  # type: ignore[arg-type]
    factors, dense = record_to_factors(message.content.array_records[ARRAYS], 16.0, False, "x")
    g = torch.Generator().manual_seed(100 * int(settings["server-round"]) + client)  # type: ignore[arg-type]
    frozen_A = 'method = "ffa"' in str(settings["fedlora-config"])
    modules = {
        name: LoraFactors(
            A=f.A + (0.0 if frozen_A else 0.1) * torch.randn(f.A.shape, generator=g),
            B=f.B + 0.1 * torch.randn(f.B.shape, generator=g),
            alpha=16.0,
            r=f.r,
        )
        for name, f in factors.items()
    }
    if "nan" in corrupt:
        name = next(iter(modules))
        modules[name].A[0, 0] = math.nan
    if "rank" in corrupt:
        name = next(iter(modules))
        f = modules[name]
        modules[name] = LoraFactors(f.A[:1], f.B[:, :1], 16.0, 1)
    update = ClientUpdate(str(client), modules, 10 + client, {k: v + 1.0 for k, v in dense.items()})
    metrics = {"train-loss": 0.5 + client, "validation-loss": 1.0 / (1 + client)}
    return Message(content=reply_content(update, metrics), reply_to=message)


def _strategy(method: str = "replication", ranks: list[int] | None = None, **options: Any):  # type: ignore[no-untyped-def]
    ranks = ranks or [2, 4, 6, 8]
    config = load_config(None).replace(
        {"run.num_clients": NUM_CLIENTS, "run.clients_per_round": 3, "aggregation.method": method}
    )
    return FedLoraStrategy(
        get_aggregator(method),
        config,
        module_names=list(SHAPES),
        policy=_policy(ranks),
        initial=GlobalState.initial(SHAPES, dense=DENSE, seed=0),
        **options,
    )


def _policy(ranks: list[int]) -> ListRanks:
    policy = ListRanks(ranks)
    policy.assign(len(ranks))
    return policy


def _nodes(**extra: dict[str, Any]) -> dict[int, dict[str, Any]]:
    nodes = {
        1000 + i: {"partition-id": i, "num-partitions": NUM_CLIENTS} for i in range(NUM_CLIENTS)
    }
    for key, config in extra.items():
        nodes[int(key.removeprefix("n"))].update(config)
    return nodes


def _round(strategy, grid: FakeGrid, server_round: int = 1):  # type: ignore[no-untyped-def]
    messages = list(strategy.configure_train(server_round, None, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    return messages, replies, strategy.aggregate_train(server_round, replies)


def test_each_sampled_node_receives_its_own_rank() -> None:
    strategy = _strategy()
    grid = FakeGrid(_nodes(), _trained)
    messages = list(strategy.configure_train(1, None, ConfigRecord(), grid))
    clients = sample_clients(0, 1, NUM_CLIENTS, 3)
    assert [m.metadata.dst_node_id for m in messages] == [1000 + c for c in clients]
    for message, client in zip(messages, clients, strict=True):
        factors, _ = record_to_factors(message.content.array_records[ARRAYS], 16.0, False, "x")
        assert {f.r for f in factors.values()} == {[2, 4, 6, 8][client]}
        assert message.metadata.message_type == MessageType.TRAIN
        assert message.content.config_records[CONFIG]["client"] == client


def test_a_rank_announced_in_the_node_config_wins_over_the_policy() -> None:
    strategy = _strategy(ranks=[1, 1, 1, 1])
    grid = FakeGrid(_nodes(n1000={"lora-rank": 5}, n1002={"lora-rank": "r3"}), _trained)
    strategy.discover(grid)
    assert [strategy.tier(c).max_rank for c in range(NUM_CLIENTS)] == [5, 1, 3, 1]
    _, _, (arrays, _) = _round(strategy, grid)
    assert arrays is not None
    served = {
        int(c): r for c, r in zip(strategy.rounds[1].clients, strategy.rounds[1].ranks, strict=True)
    }
    assert served == {c: [5, 1, 3, 1][c] for c in strategy.rounds[1].clients}


@pytest.mark.parametrize("method", sorted(available_aggregators()))
def test_the_strategy_uses_the_aggregator_unchanged(method: str) -> None:
    ranks = [4, 4, 4, 4] if method == "fedit" else [2, 4, 6, 8]
    strategy = _strategy(method, ranks)
    grid = FakeGrid(_nodes(), _trained)
    initial = strategy.state
    _, replies, (arrays, metrics) = _round(strategy, grid)
    assert arrays is not None and metrics is not None
    updates = sorted(
        (update_from_reply(r.content, False) for r in replies), key=lambda u: int(u.client_id)
    )
    expected = get_aggregator(method).aggregate(updates, initial)
    for name in SHAPES:
        torch.testing.assert_close(strategy.state.delta(name), expected.delta(name))
    for name in DENSE:
        torch.testing.assert_close(strategy.state.dense[name], expected.dense[name])
    losses = {int(u.client_id): 0.5 + int(u.client_id) for u in updates}
    sizes = {int(u.client_id): u.num_examples for u in updates}
    mean = sum(losses[c] * sizes[c] for c in losses) / sum(sizes.values())
    assert metrics["train-loss"] == pytest.approx(mean)
    if method == "flora":
        assert set(strategy.base_deltas) == set(SHAPES)


def _faulty(kind: str, victim: int) -> Trainer:
    def trainer(message: Message, context: Context) -> Message | None:
        client = int(message.content.config_records[CONFIG]["client"])  # type: ignore[arg-type]
        if client != victim:
            return _trained(message, context)
        if kind == "error":
            return Message(Error(code=1, reason="CUDA out of memory"), reply_to=message)
        if kind == "silent":
            return None
        return _trained(message, context, **{kind: True})

    return trainer


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("error", "error reply: CUDA out of memory"),
        ("nan", "NaN or Inf"),
        ("rank", "rank 1 but it was served rank"),
        ("silent", None),
    ],
)
def test_a_faulty_node_is_dropped_and_the_round_goes_on(kind: str, reason: str | None) -> None:
    clients = sample_clients(0, 1, NUM_CLIENTS, 3)
    victim = clients[1]
    strategy = _strategy()
    grid = FakeGrid(_nodes(), _faulty(kind, victim))
    initial = strategy.state
    _, replies, (arrays, metrics) = _round(strategy, grid)
    assert arrays is not None
    assert metrics is not None and metrics["num-replies"] == 2
    record = strategy.rounds[1]
    if reason is None:
        assert record.dropped == []
    else:
        assert len(record.dropped) == 1
        assert record.dropped[0].startswith(f"node {1000 + victim}:")
        assert reason in record.dropped[0]
    good = [
        update_from_reply(r.content, False)
        for r in replies
        if not r.has_error() and r.metadata.src_node_id != 1000 + victim
    ]
    expected = get_aggregator("replication").aggregate(
        sorted(good, key=lambda u: int(u.client_id)), initial
    )
    for name in SHAPES:
        assert torch.isfinite(strategy.state.modules[name].A).all()
        torch.testing.assert_close(strategy.state.delta(name), expected.delta(name))


def test_too_few_valid_replies_keep_the_global_state() -> None:
    strategy = _strategy(min_replies=3)
    victim = sample_clients(0, 1, NUM_CLIENTS, 3)[0]
    grid = FakeGrid(_nodes(), _faulty("error", victim))
    before = strategy.state
    _, _, (arrays, metrics) = _round(strategy, grid)
    assert arrays is None and metrics is None
    assert strategy.state is before


def test_an_unsampled_client_reply_is_dropped() -> None:
    strategy = _strategy()
    grid = FakeGrid(_nodes(), _trained)
    messages = list(strategy.configure_train(1, None, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    outsider = next(c for c in range(NUM_CLIENTS) if c not in strategy.rounds[1].clients)
    settings = dict(messages[0].content.config_records[CONFIG])
    forged = Message(
        content=RecordDict({CONFIG: ConfigRecord({**settings, "client": outsider})}),
        message_type=MessageType.TRAIN,
        dst_node_id=1000 + outsider,
    )
    forged.content.array_records[ARRAYS] = messages[0].content.array_records[ARRAYS]
    replies.append(_trained(forged, None))  # type: ignore[arg-type]
    strategy.aggregate_train(1, replies)
    assert any("was not sampled" in d for d in strategy.rounds[1].dropped)


def test_identify_reports_the_node_config() -> None:
    grid = FakeGrid(_nodes(n1001={"lora-rank": 8}), _trained)
    query = Message(
        content=RecordDict({CONFIG: ConfigRecord({"query": "identity"})}),
        message_type=MessageType.QUERY,
        dst_node_id=1001,
    )
    (reply,) = grid.send_and_receive([query])
    identity = reply.content.config_records[CONFIG]
    assert identity["partition-id"] == 1
    assert identity["num-partitions"] == NUM_CLIENTS
    assert identity["lora-rank"] == 8


def _loss_based(probe: bool) -> FedLoraStrategy:
    policy = LossBasedRanks(low=2, high=8, fraction=0.5, probe=probe)
    policy.assign(NUM_CLIENTS)
    config = load_config(None).replace({"run.num_clients": NUM_CLIENTS, "run.clients_per_round": 2})
    return FedLoraStrategy(
        get_aggregator("replication"),
        config,
        module_names=list(SHAPES),
        policy=policy,
        initial=GlobalState.initial(SHAPES, dense=DENSE, seed=0),
    )


def test_loss_based_probe_scores_every_node_before_round_one() -> None:
    strategy = _loss_based(probe=True)
    grid = FakeGrid(_nodes(), _trained)
    before = strategy.state
    strategy.discover(grid)
    assert strategy.state is before  # probe updates are discarded
    # validation loss 1 / (1 + client): the best half are clients 2 and 3
    assert [strategy.tier(c).max_rank for c in range(NUM_CLIENTS)] == [2, 2, 8, 8]


def test_loss_based_without_probe_promotes_among_round_one_participants() -> None:
    strategy = _loss_based(probe=False)
    grid = FakeGrid(_nodes(), _trained)
    _round(strategy, grid)
    participants = strategy.rounds[1].clients
    best = max(participants)
    assert strategy.rounds[1].promoted == [best]
    assert [strategy.tier(c).max_rank for c in range(NUM_CLIENTS)] == [
        8 if c == best else 2 for c in range(NUM_CLIENTS)
    ]


def test_duplicate_and_impersonating_replies_are_dropped() -> None:
    strategy = _strategy()
    grid = FakeGrid(_nodes(), _trained)
    messages = list(strategy.configure_train(1, None, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    first, second = strategy.rounds[1].clients[:2]
    duplicate = _trained(messages[0], None)  # type: ignore[arg-type]
    settings = dict(messages[1].content.config_records[CONFIG])
    impostor_message = Message(
        content=RecordDict({CONFIG: ConfigRecord({**settings, "client": first})}),
        message_type=MessageType.TRAIN,
        dst_node_id=1000 + second,
    )
    impostor_message.content.array_records[ARRAYS] = messages[0].content.array_records[ARRAYS]
    impostor = _trained(impostor_message, None)  # type: ignore[arg-type]
    _, metrics = strategy.aggregate_train(1, [*replies, duplicate, impostor])
    assert metrics is not None and metrics["num-replies"] == 3
    dropped = strategy.rounds[1].dropped
    assert any(f"a second reply for client {first}" in d for d in dropped)
    assert any(d.startswith(f"node {1000 + second}:") and "not its own" in d for d in dropped)


def test_a_reply_with_another_alpha_is_dropped() -> None:
    strategy = _strategy()

    def other_alpha(message: Message, context: Context) -> Message:
        reply = _trained(message, context)
        reply.content.metric_records["metrics"]["alpha"] = 8.0
        return reply

    grid = FakeGrid(_nodes(), other_alpha)
    _, _, (arrays, _) = _round(strategy, grid)
    assert arrays is None
    assert all("lora alpha 8.0 but the run uses 16.0" in d for d in strategy.rounds[1].dropped)


def test_a_node_with_a_bad_identity_is_left_out() -> None:
    strategy = _strategy()
    nodes = _nodes()
    nodes[1003]["partition-id"] = 9
    assert sorted(strategy.discover(FakeGrid(nodes, _trained))) == [0, 1, 2]


def test_flexlora_keeps_enough_triplets_for_announced_ranks() -> None:
    strategy = _strategy("flexlora", ranks=[2, 2, 2, 2])
    strategy.aggregator.max_rank = 2
    strategy.discover(FakeGrid(_nodes(n1001={"lora-rank": 6}), _trained))
    assert strategy.aggregator.max_rank == 6
