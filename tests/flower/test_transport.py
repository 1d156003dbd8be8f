"""Flower as a transport: messages through a fake grid to the real ClientApp, and back.

The grid routes each message to ``fedlora.flower.client_app`` in this process, as Flower routes
it to a node; the ClientApp builds its own model and data, so the round driver with the Flower
transport must end exactly where the in-process runner ends, for every aggregator.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedlora.aggregation import available_aggregators
from fedlora.commands.flower import flower_run_config
from fedlora.config import ExperimentConfig
from fedlora.engine import RoundDriver, RunResult, TrainTask, build_experiment, run_experiment
from fedlora.errors import ConfigError, FedloraError
from fedlora.flower import client_app, node_training, server_app
from fedlora.flower.fields import ARRAYS, CONFIG, MERGED, METRICS
from fedlora.flower.records import record_to_factors
from fedlora.flower.transport import FlowerTransport
from fedlora.runs import RunDir, load_checkpoint
from tests.engine.helpers import tiny_config

NUM_CLIENTS = 4
Handler = Callable[[Message, Context], Message | None]


@pytest.fixture(autouse=True)
def _server_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity; fake a ServerApp's.  The nodes
    keep their merged rounds under a cache of this test."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "node-cache"))
    node_training._TRAINERS.clear()


class FakeGrid(Grid):
    """Routes messages to handlers in this process as Flower routes them to nodes.

    Only the messaging the transport uses is faked; the run and message factory of a ServerApp's
    grid are not.
    """

    def __init__(
        self,
        node_configs: dict[int, dict[str, Any]],
        train: Handler,
        query: Handler = client_app.identify,
    ) -> None:
        self.node_configs = node_configs
        self.train = train
        self.query = query
        self.sent: list[Message] = []
        self.replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        raise NotImplementedError("the fake grid has no Flower run")

    @property
    def run(self) -> Run:
        raise NotImplementedError("the fake grid has no Flower run")

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise NotImplementedError("the transport builds its messages itself")

    def get_node_ids(self) -> list[int]:
        return list(self.node_configs)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        ids = self.push_messages(messages)
        return [reply for message_id in ids for reply in self.pull_messages([message_id])]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Each message is handled at once; its reply waits to be pulled by the message's id."""
        ids = []
        for message in messages:
            # The SuperLink gives every pushed message its id; replies refer to it.
            message_id = f"m{len(self.sent)}"
            message.metadata.__dict__["_message_id"] = message_id
            self.sent.append(message)
            ids.append(message_id)
            node_id = message.metadata.dst_node_id
            context = Context(
                run_id=1,
                node_id=node_id,
                node_config=self.node_configs[node_id],
                state=RecordDict(),
                run_config={},
            )
            handler = self.query if message.metadata.message_type == MessageType.QUERY else None
            reply = (handler or self.train)(message, context)
            if reply is not None:
                self.replies[message_id] = reply  # reply_to= makes it come from its node
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]


def _nodes(count: int = NUM_CLIENTS, **extra: dict[str, Any]) -> dict[int, dict[str, Any]]:
    nodes = {1000 + i: {"partition-id": i, "num-partitions": count} for i in range(count)}
    for key, config in extra.items():
        nodes[int(key.removeprefix("n"))].update(config)
    return nodes


def _config(model_dir: Path, out: Path, **overrides: Any) -> ExperimentConfig:
    return tiny_config(
        model_dir,
        out,
        **{
            "run.num_clients": NUM_CLIENTS,
            "run.clients_per_round": 2,
            "run.rounds": 2,
            "ranks.options": {"ranks": [2, 4, 4, 8]},
            "model.lora_dropout": 0.1,
            **overrides,
        },
    )


def _flower_run(config: ExperimentConfig, grid: FakeGrid, *, resume: bool = False) -> RunResult:
    path = Path(config.run.out_dir)
    run_dir = RunDir(path) if resume else RunDir.create(path, config, overwrite=False)
    transport = FlowerTransport(grid, config, run_key=run_dir.run_id, connect_timeout=1.0)
    return RoundDriver(build_experiment(config), run_dir).run(transport, resume=resume)


def _in_process(config: ExperimentConfig) -> RunResult:
    run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=False)
    return run_experiment(build_experiment(config), run_dir)


def _assert_same(flower: RunResult, reference: RunResult) -> None:
    """Same clients, ranks, losses, traffic and adapter, bit for bit."""
    for a, b in zip(flower.metrics, reference.metrics, strict=True):
        assert (a.round, a.clients, a.ranks) == (b.round, b.clients, b.ranks)
        assert (a.train_loss, a.test_loss, a.test_accuracy) == (
            b.train_loss,
            b.test_loss,
            b.test_accuracy,
        )
        assert (a.bytes_up, a.bytes_down, a.merged_params_down) == (
            b.bytes_up,
            b.bytes_down,
            b.merged_params_down,
        )
        assert a.extra.get("client_train_loss") == b.extra.get("client_train_loss")
    for name, factors in reference.state.modules.items():
        assert torch.equal(flower.state.modules[name].A, factors.A), name
        assert torch.equal(flower.state.modules[name].B, factors.B), name
    for name, tensor in reference.state.dense.items():
        assert torch.equal(flower.state.dense[name], tensor), name


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(available_aggregators()))
def test_flower_transport_ends_where_the_in_process_runner_ends(
    tiny_bert_dir: Path, tmp_path: Path, method: str
) -> None:
    ranks = [4, 4, 4, 4] if method == "fedit" else [2, 4, 4, 8]
    overrides: dict[str, Any] = {"aggregation.method": method, "ranks.options": {"ranks": ranks}}
    if method == "flora":
        overrides["run.rounds"] = 3  # clients catch up on merges they missed
    flower = _flower_run(
        _config(tiny_bert_dir, tmp_path / "flower", **overrides),
        FakeGrid(_nodes(), client_app.train),
    )
    reference = _in_process(_config(tiny_bert_dir, tmp_path / "local", **overrides))
    _assert_same(flower, reference)
    if method == "flora":
        assert flower.metrics[3].merged_params_down > 0


@pytest.mark.slow
@pytest.mark.parametrize(("score_on", "probe"), [("server", True), ("local", False)])
def test_loss_based_allocation_is_the_same_through_flower(
    tiny_bert_dir: Path, tmp_path: Path, score_on: str, probe: bool
) -> None:
    # Nodes plan the same held-out rows as the server (its validation set, or their own slice).
    options = {"low": 2, "high": 8, "fraction": 0.5, "score_rows": 40, "score_on": score_on}
    overrides = {
        "ranks.policy": "loss_based",
        "ranks.options": {**options, "probe": probe},
        "data.partition": "dirichlet",
        "data.partition_options": {"alpha": 0.5},
    }
    flower = _flower_run(
        _config(tiny_bert_dir, tmp_path / "flower", **overrides),
        FakeGrid(_nodes(), client_app.train),
    )
    reference = _in_process(_config(tiny_bert_dir, tmp_path / "local", **overrides))
    _assert_same(flower, reference)
    promoted = [r.extra.get("promoted_clients") for r in flower.metrics]
    assert promoted == [r.extra.get("promoted_clients") for r in reference.metrics]
    assert any(promoted)


@pytest.mark.slow
def test_a_flower_run_that_spills_ends_as_one_in_memory(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # Replies are pulled one at a time and spilled as they come; the server scores spilled ones.
    overrides = {
        "ranks.policy": "loss_based",
        "ranks.options": {"low": 2, "high": 8, "fraction": 0.5, "score_rows": 40},
    }
    flower = _flower_run(
        _config(tiny_bert_dir, tmp_path / "flower", **overrides, **{"aggregation.spill": "disk"}),
        FakeGrid(_nodes(), client_app.train),
    )
    reference = _in_process(_config(tiny_bert_dir, tmp_path / "local", **overrides))
    _assert_same(flower, reference)
    assert "client_scores" in flower.metrics[0].extra
    assert not RunDir(tmp_path / "flower").scratch_dir.exists()


@pytest.mark.slow
def test_pruned_ranks_travel_through_flower_as_in_process(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # HetLoRA with prune_tol = 1: every node halves its rank each time it trains.
    overrides = {
        "aggregation.method": "hetlora",
        "aggregation.options": {"gamma": 0.5, "prune_tol": 1.0},
        "run.rounds": 3,
    }
    flower = _flower_run(
        _config(tiny_bert_dir, tmp_path / "flower", **overrides),
        FakeGrid(_nodes(), client_app.train),
    )
    reference = _in_process(_config(tiny_bert_dir, tmp_path / "local", **overrides))
    _assert_same(flower, reference)
    for a, b in zip(flower.metrics[1:], reference.metrics[1:], strict=True):
        assert (a.extra["tiers"], a.extra.get("pruned")) == (
            b.extra["tiers"],
            b.extra.get("pruned"),
        )
    served_pruned = [t for row in flower.metrics[1:] for t in row.extra["tiers"] if "pruned" in t]
    assert served_pruned, "no node was served a pruned rank"


@pytest.mark.slow
def test_a_node_trains_on_its_own_file(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_bert_dir, tmp_path / "run", **{"run.clients_per_round": 4})
    names = build_experiment(config).group_names
    own = tmp_path / "node1.csv"
    texts = "\n".join(f"{names[i % len(names)]},private text {i}" for i in range(7))
    own.write_text("label,text\n" + texts + "\n", encoding="utf-8")
    grid = FakeGrid(_nodes(n1001={"data-file": str(own)}), client_app.train)
    path = Path(config.run.out_dir)
    run_dir = RunDir.create(path, config, overwrite=False)
    transport = FlowerTransport(
        grid, config, run_key=run_dir.run_id, class_names=names, connect_timeout=1.0
    )
    rows = RoundDriver(build_experiment(config), run_dir).run(transport).metrics
    for row in rows[1:]:
        examples = dict(zip(row.clients, row.extra["client_examples"], strict=True))
        assert examples[1] == 7
        assert row.extra["dropped"] == []


@pytest.mark.slow
def test_flora_nodes_receive_only_the_merges_they_lack(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_bert_dir, tmp_path / "run", **{"aggregation.method": "flora"})
    config = config.replace({"run.rounds": 3})
    grid = FakeGrid(_nodes(), client_app.train)
    rows = _flower_run(config, grid).metrics
    stored = RunDir(tmp_path / "run").merged.load(3)
    trains = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    for message in trains:
        settings = message.content.config_records[CONFIG]
        after, round_index = settings["merged-after"], settings["server-round"]
        assert isinstance(after, int) and isinstance(round_index, int)
        record = message.content.array_records.get(MERGED)
        keys = set() if record is None else set(record)
        expected = {
            f"round-{m.round}/{name}/{which}"
            for m in stored
            if after < m.round < round_index
            for name in m.modules
            for which in "AB"
        }
        assert keys == expected
    node_store = tmp_path / "node-cache" / "nodes" / RunDir(tmp_path / "run").run_id / "merged"
    assert sorted(p.name for p in node_store.iterdir()) == [
        "round-00001.safetensors",
        "round-00002.safetensors",
    ]
    assert rows[3].merged_params_down > 0


@pytest.mark.slow
def test_a_killed_flower_run_resumes_to_the_same_numbers(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    overrides = {"aggregation.method": "flora", "run.rounds": 3}
    straight = _flower_run(
        _config(tiny_bert_dir, tmp_path / "straight", **overrides),
        FakeGrid(_nodes(), client_app.train),
    )
    config = _config(tiny_bert_dir, tmp_path / "killed", **overrides)
    calls = {"train": 0}

    def dies_in_round_three(message: Message, context: Context) -> Message | None:
        calls["train"] += 1
        if int(message.content.config_records[CONFIG]["server-round"]) == 3:  # type: ignore[arg-type]
            raise KeyboardInterrupt  # the ServerApp is killed while round 3 trains
        return client_app.train(message, context)

    with pytest.raises(KeyboardInterrupt):
        _flower_run(config, FakeGrid(_nodes(), dies_in_round_three))
    assert load_checkpoint(tmp_path / "killed" / "checkpoint").state.round == 2
    node_training._TRAINERS.clear()  # the nodes start new processes too
    resumed = _flower_run(config, FakeGrid(_nodes(), client_app.train), resume=True)
    _assert_same(resumed, straight)


@pytest.mark.slow
def test_the_serverapp_continues_a_finished_run_to_more_rounds(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    """``flower-run --resume --out DIR --rounds 3`` (run config ``resume=true rounds=3``) of a
    finished 2-round FLoRA run gives the 3-round run: the nodes need the merges of rounds they
    never saw in this ServerApp."""
    straight = _flower_run(
        _config(
            tiny_bert_dir, tmp_path / "long", **{"aggregation.method": "flora", "run.rounds": 3}
        ),
        FakeGrid(_nodes(), client_app.train),
    )
    _flower_run(
        _config(tiny_bert_dir, tmp_path / "short", **{"aggregation.method": "flora"}),
        FakeGrid(_nodes(), client_app.train),
    )
    node_training._TRAINERS.clear()
    run_config = flower_run_config(
        None, tmp_path / "short", overwrite=False, round_timeout=60.0, rounds=3
    )
    assert (run_config["resume"], run_config["rounds"]) == (True, 3)
    metrics = server_app.run_federation(
        FakeGrid(_nodes(), client_app.train), {**run_config, "connect-timeout": 1.0}
    )
    state = load_checkpoint(tmp_path / "short" / "checkpoint").state
    _assert_same(RunResult(metrics, state, wall_seconds=0.0), straight)
    assert RunDir(tmp_path / "short").is_finished()

    with pytest.raises(FedloraError, match=r"rounds=4 continues an existing run: set resume=true"):
        server_app.run_federation(FakeGrid(_nodes(), client_app.train), {"rounds": 4})


@pytest.mark.parametrize("rounds", [4.5, -1, "4", True, float("nan")])
def test_a_rounds_run_config_that_is_no_whole_number_is_one_clear_error(
    rounds: object, tmp_path: Path
) -> None:
    """``flwr run --run-config`` values are not typed by Flower: 4.5 must not become 4."""
    run_config = {"resume": True, "out-dir": str(tmp_path), "rounds": rounds}
    with pytest.raises(FedloraError, match=r"run config rounds=.*: give a whole number of rounds"):
        server_app.run_federation(FakeGrid(_nodes(), client_app.train), run_config)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("resume", "false", "give true or false, unquoted"),
        ("overwrite", 1, "give true or false, unquoted"),
        ("round-timeout", 0, "give a number of seconds above 0"),
        ("round-timeout", "600", "give a number of seconds above 0"),
        ("connect-timeout", -1.0, "give a number of seconds above 0"),
        ("connect-timeout", float("inf"), "give a number of seconds above 0"),
    ],
)
def test_a_run_config_flag_or_timeout_of_the_wrong_kind_is_refused_before_anything_is_written(
    key: str, value: object, message: str, tmp_path: Path
) -> None:
    """A quoted "false" would be true for ``bool()``: a resume nobody asked for."""
    out = tmp_path / "run"
    run_config = {"out-dir": str(out), key: value}
    with pytest.raises(FedloraError, match=rf"^run config {key}={value!r}: {message}$"):
        server_app.run_federation(FakeGrid(_nodes(), client_app.train), run_config)
    assert not out.exists()


def test_connect_learns_the_clients_and_their_announced_ranks() -> None:
    nodes = _nodes(n1000={"lora-rank": 5}, n1002={"lora-rank": "r3"})
    nodes[1004] = {"partition-id": 1, "num-partitions": NUM_CLIENTS}  # a second node for 1
    nodes[1005] = {"partition-id": 9, "num-partitions": NUM_CLIENTS}  # no such client
    transport = FlowerTransport(
        FakeGrid(nodes, client_app.train), _plain_config(), run_key="ab12", connect_timeout=1.0
    )
    roster = transport.connect(NUM_CLIENTS)
    assert roster.clients == frozenset(range(NUM_CLIENTS))
    assert {c: t.max_rank for c, t in roster.announced.items()} == {0: 5, 2: 3}
    assert transport.nodes[1].node_id == 1001


def _plain_config() -> ExperimentConfig:
    from fedlora.config import load_config

    return load_config(None).replace({"run.num_clients": NUM_CLIENTS})


def _tasks() -> list[TrainTask]:
    A, B = torch.randn(2, 8), torch.zeros(8, 2)
    from fedlora.lora import LoraFactors

    factors = {"enc.query": LoraFactors(A=A, B=B, alpha=16.0, r=2)}
    return [
        TrainTask(client=c, round=1, factors=factors, dense={}, merged_after=0, score=c == 1)
        for c in (0, 1, 2)
    ]


def _echo(message: Message, context: Context, **change: Any) -> Message:
    """A node that sends its factors back untouched, as client ``change['client']`` if given."""
    from fedlora.flower.records import reply_content
    from fedlora.lora import ClientUpdate, LoraSettings

    settings = message.content.config_records[CONFIG]
    client = int(change.get("client", settings["client"]))
    factors, dense = record_to_factors(
        message.content.array_records[ARRAYS], LoraSettings(16.0), client
    )
    update = ClientUpdate(client, factors, 10, dense)
    return Message(content=reply_content(update, {"train-loss": 0.5}), reply_to=message)


def test_each_task_reaches_its_clients_node_with_its_settings() -> None:
    grid = FakeGrid(_nodes(), _echo)
    transport = FlowerTransport(grid, _plain_config(), run_key="ab12", connect_timeout=1.0)
    transport.connect(NUM_CLIENTS)
    replies = list(transport.train(_tasks()))
    trains = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert [m.metadata.dst_node_id for m in trains] == [1000, 1001, 1002]
    assert [m.content.config_records[CONFIG]["score"] for m in trains] == [False, True, False]
    assert {m.content.config_records[CONFIG]["run-key"] for m in trains} == {"ab12"}
    assert [r.client for r in replies] == [0, 1, 2]
    assert all(r.error is None and r.train_loss == 0.5 for r in replies)


def test_a_bad_reply_becomes_a_failed_reply_of_its_nodes_client() -> None:
    def node(message: Message, context: Context) -> Message | None:
        client = int(message.content.config_records[CONFIG]["client"])  # type: ignore[arg-type]
        if client == 0:
            return Message(Error(code=1, reason="CUDA out of memory"), reply_to=message)
        if client == 1:
            return _echo(message, context, client=2)  # answers for another client
        reply = _echo(message, context)
        del reply.content.metric_records[METRICS]["client"]
        return reply

    transport = FlowerTransport(
        FakeGrid(_nodes(), node), _plain_config(), run_key="ab12", connect_timeout=1.0
    )
    transport.connect(NUM_CLIENTS)
    replies = {r.client: r for r in transport.train(_tasks())}
    assert replies[0].error == "node 1000 sent an error: CUDA out of memory"
    assert replies[1].error == "node 1001 answered for client 2, not its own"
    assert replies[2].error is not None and "malformed" in replies[2].error
    assert all(r.update is None for r in replies.values())


def test_a_silent_node_is_a_failed_reply_naming_it() -> None:
    def node(message: Message, context: Context) -> Message | None:
        return None if context.node_id == 1001 else _echo(message, context)

    transport = FlowerTransport(
        FakeGrid(_nodes(), node), _plain_config(), run_key="ab12", timeout=1.5
    )
    transport.connect(NUM_CLIENTS)
    replies = {r.client: r for r in transport.train(_tasks())}
    assert sorted(replies) == [0, 1, 2]
    assert replies[1].error == "node 1001 sent no reply within 1.5 s"
    assert replies[1].update is None
    assert replies[0].error is None and replies[2].error is None


def test_a_node_that_does_not_identify_itself_is_left_out_by_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def query(message: Message, context: Context) -> Message | None:
        return None if context.node_id == 1002 else client_app.identify(message, context)

    transport = FlowerTransport(
        FakeGrid(_nodes(), _echo, query), _plain_config(), run_key="ab12", connect_timeout=5.0
    )
    with caplog.at_level("WARNING", logger="fedlora.flower.transport"):
        roster = transport.connect(NUM_CLIENTS)
    assert sorted(roster.clients) == [0, 1, 3]
    assert "node 1002 did not identify itself within 5 s; it is left out" in caplog.text


def test_identify_reports_the_node_config() -> None:
    grid = FakeGrid(_nodes(n1001={"lora-rank": 8}), client_app.train)
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


IDENTIFY_IN_A_FRESH_PROCESS = """
import sys
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
from fedlora.flower import client_app
query = Message(content=RecordDict(), dst_node_id=7, message_type=MessageType.QUERY)
query.metadata.__dict__["_message_id"] = "m0"
node = {"partition-id": 3, "num-partitions": 5, "lora-rank": 8}
context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
print(dict(client_app.identify(query, context).content.config_records["config"]))
print(sorted(name for name in ("torch", "transformers", "peft") if name in sys.modules))
"""


def test_a_fresh_clientapp_process_answers_the_query_without_torch() -> None:
    # A SuperNode starts a new ClientApp process per message: the identity query must not pay
    # for importing torch, transformers and PEFT, which only the train handler needs.
    out = subprocess.run(
        [sys.executable, "-c", IDENTIFY_IN_A_FRESH_PROCESS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == ["{'partition-id': 3, 'num-partitions': 5, 'lora-rank': 8}", "[]"]


def test_an_error_the_superlink_sends_for_a_lost_node_is_that_nodes_clients() -> None:
    # Flower answers a message to a node that went away with an error from the SuperLink (its
    # own node id); the reply is matched by message id and logged with the lost node's id.
    def lost(message: Message, context: Context) -> Message:
        reply = Message(Error(code=1, reason="Node Unavailable"), reply_to=message)
        reply.metadata.__dict__["_src_node_id"] = 1  # the SuperLink's own id
        return reply

    transport = FlowerTransport(
        FakeGrid(_nodes(), lost), _plain_config(), run_key="ab12", connect_timeout=1.0
    )
    transport.connect(NUM_CLIENTS)
    replies = {r.client: r for r in transport.train(_tasks())}
    assert sorted(replies) == [0, 1, 2]
    assert replies[2].error == "node 1002 sent an error: Node Unavailable"


def test_a_node_that_rejoins_under_a_new_id_takes_its_client_back() -> None:
    nodes = _nodes()
    grid = FakeGrid(nodes, _echo)
    transport = FlowerTransport(grid, _plain_config(), run_key="ab12", connect_timeout=1.0)
    transport.connect(NUM_CLIENTS)
    list(transport.train(_tasks()))
    del nodes[1002]  # the SuperNode of client 2 dies ...
    nodes[1099] = {"partition-id": 2, "num-partitions": NUM_CLIENTS}  # ... and restarts
    nodes[1100] = {"partition-id": 9, "num-partitions": NUM_CLIENTS}  # no client of this run
    grid.sent.clear()
    replies = list(transport.train(_tasks()))
    trains = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert [m.metadata.dst_node_id for m in trains] == [1000, 1001, 1099]
    assert all(r.error is None for r in replies) and len(replies) == 3
    queried = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "query"]
    assert sorted(queried) == [1099, 1100]
    grid.sent.clear()
    list(transport.train(_tasks()))  # known nodes, and the stranger, are not asked again
    assert not [m for m in grid.sent if m.metadata.message_type == MessageType.QUERY]


@pytest.mark.slow
def test_a_bfloat16_run_through_flower_ends_where_the_in_process_run_ends(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # The server's config says "auto"; every node resolves its own device (one says so itself).
    half = {"model.dtype": "bfloat16"}
    nodes = _nodes(n1001={"device": "cpu"})
    flower = _flower_run(
        _config(tiny_bert_dir, tmp_path / "flower", **half), FakeGrid(nodes, client_app.train)
    )
    reference = _in_process(_config(tiny_bert_dir, tmp_path / "local", **half))
    _assert_same(flower, reference)
    full = _in_process(_config(tiny_bert_dir, tmp_path / "float32"))
    for row, float32_row in zip(flower.metrics[1:], full.metrics[1:], strict=True):
        assert row.train_loss is not None and torch.isfinite(torch.tensor(row.train_loss))
        assert row.test_loss is not None and torch.isfinite(torch.tensor(row.test_loss))
        # Factors and head travel in float32 whatever the base model's precision.
        assert (row.clients, row.ranks) == (float32_row.clients, float32_row.ranks)
        assert (row.bytes_up, row.bytes_down) == (float32_row.bytes_up, float32_row.bytes_down)
    assert row.train_loss != float32_row.train_loss  # the base model did run in bfloat16
    state = [t for f in flower.state.modules.values() for t in (f.A, f.B)]
    state += list(flower.state.dense.values())
    assert {(t.dtype, t.device.type) for t in state} == {(torch.float32, "cpu")}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("client", 1.5, "an integer"),
        ("server-round", "2", "an integer"),
        ("merged-after", True, "an integer"),
        ("score", "False", "true or false"),
    ],
)
def test_a_train_message_whose_setting_has_the_wrong_type_is_refused_by_name(
    key: str, value: Any, expected: str
) -> None:
    """A server of another version could send a float or a string: refused by name, not
    truncated (1.5 to 1) or read as truthy ("False" as True)."""
    settings: dict[str, Any] = {"fedlora-config": ExperimentConfig().to_toml()}
    settings |= {"run-key": "ab12cd34", "client": 1, "server-round": 1, "merged-after": 0}
    settings |= {"score": False, key: value}
    message = Message(
        content=RecordDict({CONFIG: ConfigRecord(settings)}),
        message_type=MessageType.TRAIN,
        dst_node_id=1001,
    )
    node: dict[str, Any] = {"partition-id": 1, "num-partitions": NUM_CLIENTS}
    context = Context(run_id=1, node_id=1001, node_config=node, state=RecordDict(), run_config={})
    refusal = f"the server's train message: setting '{key}' must be {expected}, got {value!r}"
    with pytest.raises(FedloraError, match=re.escape(refusal)):
        client_app.train(message, context)


def test_a_nodes_own_device_setting_overrides_the_servers() -> None:
    toml = ExperimentConfig().to_toml()
    assert node_training._config(toml, {}).model.device == "auto"
    assert node_training._config(toml, {"device": "cuda:1"}).model.device == "cuda:1"
    with pytest.raises(ConfigError, match=r"model\.device: must be"):
        node_training._config(toml, {"device": "gpu"})
