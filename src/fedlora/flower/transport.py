"""Flower as a transport of the round driver: train tasks out as messages, replies back.

Each Flower node is one client (its ``partition-id``).  :meth:`FlowerTransport.connect` asks
every connected node once, with a query message, which client it is and which rank it
announces; :meth:`FlowerTransport.train` sends each task to its client's node and decodes the
replies.  What only a network can get wrong is checked here (an error reply, malformed arrays, a
node answering for another client) and becomes a failed :class:`~fedlora.engine.ClientReply`;
everything else (ranks, alpha, NaN, duplicates) the driver checks for both transports alike.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedlora.config import ExperimentConfig
from fedlora.engine import ClientReply, Roster, TrainTask
from fedlora.errors import FedloraError
from fedlora.flower.fields import ARRAYS, CONFIG, MERGED, METRICS
from fedlora.flower.records import (
    factors_to_record,
    merged_to_record,
    metric_integer,
    update_from_reply,
)
from fedlora.lora import LoraSettings
from fedlora.ranks import RankTier

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How long to wait before asking the SuperLink again when no reply arrived."""


@dataclass(frozen=True)
class NodeInfo:
    """A node as it introduced itself: its client index and the tier it announced, if any."""

    node_id: int
    client: int
    announced: RankTier | None


class FlowerTransport:
    """Carries the driver's tasks to Flower nodes over a :class:`flwr.serverapp.Grid`.

    Parameters
    ----------
    grid : the ServerApp's grid.
    config : the experiment config, sent to every node so that it trains exactly as configured.
    run_key : names this run on the nodes' disks (their cache of merged rounds); the same for a
        resumed run.
    class_names : the run's classes (classification), for nodes that read a file of their own.
    timeout : seconds to wait for the replies of one exchange.
    connect_timeout : seconds to wait for every client's node to connect.
    """

    name = "flower"

    def __init__(
        self,
        grid: Grid,
        config: ExperimentConfig,
        *,
        run_key: str,
        class_names: Sequence[str] = (),
        timeout: float = 600.0,
        connect_timeout: float = 120.0,
    ) -> None:
        self.grid = grid
        self.config = config
        self.run_key = run_key
        self.class_names = list(class_names)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.nodes: dict[int, NodeInfo] = {}
        self.num_clients = 0
        self._strangers: set[int] = set()  # nodes that identified as no client of this run
        self.lora = config.model.lora_settings()
        self._config_toml = config.to_toml()

    # ------------------------------------------------------------------ connect

    def connect(self, num_clients: int) -> Roster:
        """Ask every connected node which client it is and which rank it announces."""
        self.num_clients = num_clients
        deadline = time.monotonic() + self.connect_timeout
        while len(node_ids := list(self.grid.get_node_ids())) < num_clients:
            if time.monotonic() > deadline:
                raise FedloraError(
                    f"only {len(node_ids)} of {num_clients} nodes connected within "
                    f"{self.connect_timeout:.0f} s"
                )
            time.sleep(1.0)
        self._identify(node_ids)
        missing = sorted(set(range(num_clients)) - set(self.nodes))
        if missing:
            log.warning("no node serves client(s) %s; they are skipped when sampled", missing)
        announced = {c: i.announced for c, i in self.nodes.items() if i.announced is not None}
        return Roster(clients=frozenset(self.nodes), announced=announced)

    def _identify(self, node_ids: Sequence[int]) -> None:
        """Query ``node_ids`` and learn which client each serves (a newer node of a client
        replaces one that left: a SuperNode that restarts comes back under a new id)."""
        queries = [
            Message(
                content=RecordDict({CONFIG: ConfigRecord({"query": "identity"})}),
                message_type=MessageType.QUERY,
                dst_node_id=node_id,
            )
            for node_id in node_ids
        ]
        live = set(self.grid.get_node_ids())
        answers = self.grid.send_and_receive(queries, timeout=self.connect_timeout)
        asked = {query.metadata.message_id: query.metadata.dst_node_id for query in queries}
        for reply in answers:
            # By message id: the SuperLink answers for a node that went away under its own id.
            node_id = asked.pop(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                log.warning("node %d did not identify itself: %s", node_id, reply.error.reason)
                continue
            try:
                info = _node_info(node_id, reply.content.config_records[CONFIG], self.num_clients)
            except FedloraError as error:
                log.warning("node %d is left out: %s", node_id, error)
                continue
            current = self.nodes.get(info.client)
            if current is not None and current.node_id in live:
                log.warning(
                    "nodes %d and %d both serve client %d; node %d is left out",
                    current.node_id,
                    node_id,
                    info.client,
                    node_id,
                )
                continue
            if current is not None:
                log.info("client %d is back, on node %d", info.client, node_id)
            self.nodes[info.client] = info
        for node_id in asked.values():
            log.warning(
                "node %d did not identify itself within %g s; it is left out",
                node_id,
                self.connect_timeout,
            )

    def _refresh(self) -> None:
        """Before every exchange: identify the nodes that joined since the last one."""
        known = {info.node_id for info in self.nodes.values()} | self._strangers
        new = [node for node in self.grid.get_node_ids() if node not in known]
        if new:
            self._identify(new)
            self._strangers |= set(new) - {info.node_id for info in self.nodes.values()}

    # ------------------------------------------------------------------ train

    def train(self, tasks: Iterable[TrainTask]) -> Iterator[ClientReply]:
        """Send each task to its client's node as it is served, then yield the replies as the
        SuperLink has them, pulled one message at a time (one reply in memory, whatever the
        number of clients).  Replies are pulled by the id of their task's message, so an error the
        SuperLink sends for a node that went away is that node's client's.  A node that does not
        answer within ``timeout`` (it hangs, or is gone without the SuperLink noticing yet) gets
        a failed reply naming it."""
        self._refresh()
        sent: dict[str, TrainTask] = {}
        for task in tasks:
            if task.client not in self.nodes:
                yield ClientReply.failed(task.client, "no node serves it")
                continue
            ids = list(self.grid.push_messages([self._message(task)]))
            if not ids:
                yield ClientReply.failed(task.client, "the SuperLink did not accept its task")
                continue
            sent[ids[0]] = task
        deadline = time.monotonic() + self.timeout
        while sent and time.monotonic() < deadline:
            pending = len(sent)
            for message_id in list(sent):
                for message in self.grid.pull_messages([message_id]):
                    task = sent.pop(message_id)
                    yield _decode(message, task.client, self.nodes[task.client].node_id, self.lora)
                    break  # one reply per message
            if len(sent) == pending:
                time.sleep(POLL_SECONDS)
        for task in sent.values():  # we gave up waiting: the node never answered
            yield ClientReply.failed(
                task.client,
                f"node {self.nodes[task.client].node_id} sent no reply within {self.timeout:g} s",
            )

    def _message(self, task: TrainTask) -> Message:
        content: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
            ARRAYS: factors_to_record(task.factors, task.dense),
            CONFIG: ConfigRecord(
                {
                    "server-round": task.round,
                    "client": task.client,
                    "merged-after": task.merged_after,
                    "score": task.score,
                    "run-key": self.run_key,
                    "class-names": self.class_names,
                    "fedlora-config": self._config_toml,
                }
            ),
        }
        if task.merged:
            content[MERGED] = merged_to_record(task.merged)
        return Message(
            content=RecordDict(content),
            message_type=MessageType.TRAIN,
            dst_node_id=self.nodes[task.client].node_id,
        )


def _decode(message: Message, client: int, node_id: int, lora: LoraSettings) -> ClientReply:
    """The reply for ``client``'s task, sent to ``node_id``, as a :class:`ClientReply`; whatever
    is wrong with it becomes its error (a reply is untrusted input: any failure to read it is
    the reply's, never the server's)."""
    if message.has_error():
        return ClientReply.failed(client, f"node {node_id} sent an error: {message.error.reason}")
    try:
        update = update_from_reply(message.content, lora)
        metrics = message.content.metric_records[METRICS]
        steps = metric_integer(metrics, "steps") if "steps" in metrics else 0
        merged = metric_integer(metrics, "merged-round") if "merged-round" in metrics else 0
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        return ClientReply.failed(
            client, f"node {node_id} sent a malformed reply: {type(error).__name__}: {reason}"
        )
    if update.client_id != client:
        return ClientReply.failed(
            client, f"node {node_id} answered for client {update.client_id}, not its own"
        )
    score = metrics.get("local-score")
    return ClientReply(
        client=client,
        update=update,
        train_loss=_number(metrics, "train-loss", math.nan),
        steps=steps,
        seconds=_number(metrics, "seconds", 0.0),
        local_score=float(score) if isinstance(score, int | float) else None,
        merged_round=merged,
    )


def _number(metrics: MetricRecord, key: str, default: float) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) else default


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
