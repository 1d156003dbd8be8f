"""A Flower Message-API strategy that runs fedlora's aggregators over rank-heterogeneous nodes.

Each node is one client (its ``partition-id``).  The strategy learns the nodes once with a query
message (which client each node is, and the rank it announces), samples clients with the same
seeded ``(seed, round)`` draw as the in-process runner, sends every node the factors for its own
rank map, and aggregates the replies with the selected aggregator.  A reply that carries an
error, malformed arrays, a wrong rank or NaN is logged with its node id and dropped; the round
goes on with the others when at least ``min_replies`` are valid, and the global state is never
corrupted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedlora.aggregation import Aggregator, FlexLoRA, GlobalState
from fedlora.aggregation.validation import validate_round
from fedlora.config import ExperimentConfig
from fedlora.engine.client import tensor_bytes
from fedlora.engine.seeds import sample_clients
from fedlora.errors import FedloraError
from fedlora.flower.records import (
    ARRAYS,
    BASE,
    CONFIG,
    METRICS,
    base_to_record,
    factors_to_record,
    state_to_record,
    update_from_reply,
)
from fedlora.lora import ClientUpdate
from fedlora.ranks import RankPolicy, RankTier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    """A node as it introduced itself: its client index and the tier it announced, if any."""

    node_id: int
    client: int
    announced: RankTier | None


@dataclass
class RoundLog:
    """What the strategy saw in one round (the server app turns it into a metrics line)."""

    clients: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)
    train_loss: float = float("nan")
    bytes_up: int = 0
    bytes_down: int = 0
    seconds_train: float = 0.0
    seconds_aggregate: float = 0.0
    dropped: list[str] = field(default_factory=list)
    client_train_loss: dict[int, float] = field(default_factory=dict)
    validation_loss: dict[int, float] = field(default_factory=dict)
    promoted: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


class FedLoraStrategy(Strategy):
    """fedlora's aggregation as a Flower strategy (the aggregator is used unchanged).

    Parameters
    ----------
    aggregator : the fedlora aggregator (``get_aggregator(name, ...)``).
    config : the experiment config; sent to every node so that it trains exactly as configured.
    module_names : the adapted modules (tiers are resolved against them).
    policy : the rank policy (its allocation serves nodes that announce no rank); a loss-based
        policy is fed the clients' validation losses after round 1, or after a probe of every
        client before round 1, exactly as the in-process runner does.
    initial : the round-0 global state.
    min_replies : fewest valid replies a round needs to change the global state.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        config: ExperimentConfig,
        *,
        module_names: Sequence[str],
        policy: RankPolicy,
        initial: GlobalState,
        min_replies: int = 1,
    ) -> None:
        self.aggregator = aggregator
        self.config = config
        self.module_names = list(module_names)
        self.policy = policy
        self.state = initial
        self.min_replies = min_replies
        self.nodes: dict[int, NodeInfo] = {}
        self.base_deltas: dict[str, Tensor] = {}
        self.rounds: dict[int, RoundLog] = {}
        self._config_toml = config.to_toml()

    # ------------------------------------------------------------------ nodes

    def discover(self, grid: Grid, timeout: float = 120.0) -> dict[int, NodeInfo]:
        """Ask every connected node which client it is and which rank it announces."""
        needed = self.config.run.num_clients
        deadline = time.monotonic() + timeout
        while len(node_ids := list(grid.get_node_ids())) < needed:
            if time.monotonic() > deadline:
                raise FedloraError(
                    f"only {len(node_ids)} of {needed} nodes connected within {timeout:.0f} s"
                )
            time.sleep(1.0)
        queries = [
            Message(
                content=RecordDict({CONFIG: ConfigRecord({"query": "identity"})}),
                message_type=MessageType.QUERY,
                dst_node_id=node_id,
            )
            for node_id in node_ids
        ]
        for reply in grid.send_and_receive(queries, timeout=timeout):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %d did not identify itself: %s", node_id, reply.error.reason)
                continue
            try:
                info = _node_info(node_id, reply.content.config_records[CONFIG], needed)
            except FedloraError as error:
                log.warning("node %d is left out: %s", node_id, error)
                continue
            if info.client in self.nodes:
                log.warning(
                    "nodes %d and %d both serve client %d; node %d is left out",
                    self.nodes[info.client].node_id,
                    node_id,
                    info.client,
                    node_id,
                )
                continue
            self.nodes[info.client] = info
        missing = sorted(set(range(needed)) - set(self.nodes))
        if missing:
            log.warning("no node serves client(s) %s; they are skipped when sampled", missing)
        self._cover_announced_ranks()
        if self.policy.needs_probe:
            self.probe(grid, timeout)
        return self.nodes

    def _cover_announced_ranks(self) -> None:
        """FlexLoRA must keep enough triplets for the highest rank a node announced."""
        announced = [i.announced.max_rank for i in self.nodes.values() if i.announced is not None]
        if isinstance(self.aggregator, FlexLoRA) and announced:
            current = self.aggregator.max_rank or 0
            self.aggregator.max_rank = max(current, *announced)

    def probe(self, grid: Grid, timeout: float) -> None:
        """Byun & Lee's scoring: every client trains once from the initial state (round 0)."""
        record = RoundLog(clients=sorted(self.nodes))
        replies = grid.send_and_receive(self._train_messages(0, record), timeout=timeout)
        self.valid_updates(replies, record)
        self._promote(record)

    def tier(self, client: int) -> RankTier:
        info = self.nodes.get(client)
        if info is not None and info.announced is not None:
            return info.announced
        return self.policy.tier_of(client)

    # ------------------------------------------------------------------ training

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.nodes:
            self.discover(grid)
        run = self.config.run
        clients = [
            c
            for c in sample_clients(
                run.seed, server_round, run.num_clients, run.sampled_per_round()
            )
            if c in self.nodes
        ]
        record = RoundLog(clients=clients)
        self.rounds[server_round] = record
        return self._train_messages(server_round, record)

    def _train_messages(self, server_round: int, record: RoundLog) -> list[Message]:
        alpha, rslora = self.config.model.lora_alpha, self.config.model.use_rslora
        messages = []
        for client in record.clients:
            tier = self.tier(client)
            factors = self.state.factors_for(tier.rank_map(self.module_names), alpha, rslora)
            record.ranks.append(tier.max_rank)
            record.tiers.append(str(tier))
            record.bytes_down += tensor_bytes(factors, self.state.dense)
            content: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
                ARRAYS: factors_to_record(factors, self.state.dense),
                CONFIG: ConfigRecord(
                    {
                        "server-round": server_round,
                        "client": client,
                        "fedlora-config": self._config_toml,
                    }
                ),
            }
            if self.base_deltas:
                content[BASE] = base_to_record(self.base_deltas)
            messages.append(
                Message(
                    content=RecordDict(content),
                    message_type=MessageType.TRAIN,
                    dst_node_id=self.nodes[client].node_id,
                )
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self.rounds.setdefault(server_round, RoundLog())
        record.seconds_train = time.perf_counter() - record.started
        updates, losses = self.valid_updates(replies, record)
        if len(updates) < self.min_replies:
            log.warning(
                "round %d: %d valid replies, fewer than the %d needed; the global state is kept",
                server_round,
                len(updates),
                self.min_replies,
            )
            return None, None
        tick = time.perf_counter()
        try:
            state = self.aggregator.aggregate(updates, self.state)
        except FedloraError as error:
            log.warning(
                "round %d: aggregation failed, the global state is kept: %s", server_round, error
            )
            record.dropped.append(f"round: {error}")
            return None, None
        for name, factors in state.merge_into_base.items():
            delta = factors.delta()
            self.base_deltas[name] = self.base_deltas.get(name, torch.zeros_like(delta)) + delta
        self.state = state
        record.seconds_aggregate = time.perf_counter() - tick
        total = sum(u.num_examples for u in updates)
        record.train_loss = sum(losses[u.client_id] * u.num_examples for u in updates) / total
        record.bytes_up = sum(tensor_bytes(u.modules, u.dense) for u in updates)
        record.client_train_loss = {int(u.client_id): losses[u.client_id] for u in updates}
        if server_round == 1 and not self.policy.needs_probe:
            self._promote(record)
        metrics = MetricRecord({"train-loss": record.train_loss, "num-replies": len(updates)})
        return state_to_record(state), metrics

    def valid_updates(
        self, replies: Iterable[Message], record: RoundLog
    ) -> tuple[list[ClientUpdate], dict[str, float]]:
        """The replies that can be aggregated, sorted by client; the rest are logged and dropped."""
        updates: list[ClientUpdate] = []
        losses: dict[str, float] = {}
        expected = {str(c) for c in record.clients}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                self._drop(record, node_id, f"error reply: {reply.error.reason}")
                continue
            try:
                update = update_from_reply(reply.content, self.config.model.use_rslora)
                if update.client_id not in expected:
                    raise FedloraError(f"client {update.client_id} was not sampled this round")
                if node_id != self.nodes[int(update.client_id)].node_id:
                    raise FedloraError(f"it answered for client {update.client_id}, not its own")
                if update.client_id in losses:
                    raise FedloraError(f"a second reply for client {update.client_id}")
                self._check_alpha(update)
                validate_round([update], self.state)
                self._check_rank(update)
                self.aggregator.check_update(update, self.state)
            except FedloraError as error:
                self._drop(record, node_id, str(error))
                continue
            metrics = reply.content.metric_records[METRICS]
            loss = metrics.get("train-loss")
            losses[update.client_id] = float(loss) if isinstance(loss, int | float) else math.nan
            validation = metrics.get("validation-loss")
            if isinstance(validation, int | float):
                record.validation_loss[int(update.client_id)] = float(validation)
            updates.append(update)
        updates.sort(key=lambda u: int(u.client_id))
        return updates, losses

    def _promote(self, record: RoundLog) -> None:
        """Feed a loss-based policy the validation losses it asked for (others ignore them)."""
        if not record.validation_loss:
            return
        changed = self.policy.observe_losses(record.validation_loss)
        if changed is not None:
            top = max(t.max_rank for t in changed)
            record.promoted = [c for c, t in enumerate(changed) if t.max_rank == top]
            log.info("rank policy: clients %s promoted to rank %d", record.promoted, top)

    def _check_alpha(self, update: ClientUpdate) -> None:
        alpha = self.config.model.lora_alpha
        for name, factors in update.modules.items():
            if not math.isclose(factors.alpha, alpha, rel_tol=1e-6):
                raise FedloraError(
                    f"client {update.client_id}, module {name!r}: lora alpha {factors.alpha} "
                    f"but the run uses {alpha}"
                )

    def _check_rank(self, update: ClientUpdate) -> None:
        expected = self.tier(int(update.client_id)).rank_map(self.module_names)
        for name, factors in update.modules.items():
            if factors.r != expected[name]:
                raise FedloraError(
                    f"client {update.client_id}, module {name!r}: rank {factors.r} but it was "
                    f"served rank {expected[name]}"
                )

    @staticmethod
    def _drop(record: RoundLog, node_id: int, reason: str) -> None:
        log.warning("dropping the reply of node %d: %s", node_id, reason)
        record.dropped.append(f"node {node_id}: {reason}")

    # ------------------------------------------------------------------ evaluation

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The global model is evaluated on the server (``evaluate_fn``), not on the nodes."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log.info(
            "FedLoraStrategy: %s, %d clients, %d per round, min %d valid replies",
            self.aggregator,
            self.config.run.num_clients,
            self.config.run.sampled_per_round(),
            self.min_replies,
        )


def _node_info(node_id: int, identity: ConfigRecord, num_clients: int) -> NodeInfo:
    client = identity.get("partition-id")
    partitions = identity.get("num-partitions")
    if not isinstance(client, int) or not 0 <= client < num_clients:
        raise FedloraError(
            f"node {node_id}: partition-id {client!r} is not in 0..{num_clients - 1}"
        )
    if partitions is not None and partitions != num_clients:
        raise FedloraError(
            f"node {node_id}: num-partitions {partitions!r} but the config has {num_clients} "
            "clients"
        )
    announced = identity.get("lora-rank")
    tier = None if announced in (None, "", 0) else RankTier.parse(announced, "lora-rank")
    return NodeInfo(node_id=node_id, client=client, announced=tier)


def announced_rank(node_config: Mapping[str, object]) -> str | int:
    """A node's announced rank from its ``--node-config`` (``lora-rank=8`` or ``"r8"``)."""
    value = node_config.get("lora-rank", 0)
    return value if isinstance(value, int | str) else 0
