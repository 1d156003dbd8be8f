"""What travels between the round driver and the clients, and the contract of a transport.

The round driver (:mod:`fedlora.engine.driver`) decides everything a round does; a transport
only carries :class:`TrainTask` s to clients and brings back :class:`ClientReply` s.  The
in-process pool (:class:`InProcessTransport`) and Flower (:mod:`fedlora.flower.transport`) are
the two transports, so both runners train the same clients from the same factors by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from fedlora.lora import ClientUpdate, LoraFactors, MergedRound
from fedlora.ranks import RankTier


@dataclass(frozen=True)
class TrainTask:
    """Train ``client`` in ``round`` (0 is the loss-based probe) from the served factors.

    ``merged`` lists, in round order, every base-weight merge after round ``merged_after`` (the
    last merge the server knows the client applied); a client applies them before it trains.
    ``score`` asks the client for the loss of its trained adapter on its own held-out rows (the
    loss-based policy's ``score_on = "local"``).
    """

    client: int
    round: int
    factors: Mapping[str, LoraFactors]
    dense: Mapping[str, Tensor]
    merged: Sequence[MergedRound] = ()
    merged_after: int = 0
    score: bool = False

    @property
    def merged_round(self) -> int:
        """The last merged round the client holds once it has applied :attr:`merged`."""
        return self.merged[-1].round if self.merged else self.merged_after


@dataclass(frozen=True)
class ClientReply:
    """What came back for one task: an update, or the reason there is none.

    ``merged_round`` is the last base merge the client had applied when it trained.
    """

    client: int
    update: ClientUpdate | None
    train_loss: float = math.nan
    steps: int = 0
    seconds: float = 0.0
    local_score: float | None = None
    merged_round: int = 0
    error: str | None = None

    @classmethod
    def failed(cls, client: int, error: str) -> ClientReply:
        return cls(client=client, update=None, error=error)


@dataclass(frozen=True)
class Roster:
    """The clients a transport can reach, and the rank tiers some of them announced."""

    clients: frozenset[int]
    announced: Mapping[int, RankTier] = field(default_factory=dict)


class ClientRunner(Protocol):
    """Trains one task on this machine (the engine's ``ClientTrainer``)."""

    def train(self, task: TrainTask) -> ClientReply: ...


class Transport(Protocol):
    """Carries train tasks to clients and their replies back."""

    name: str

    def connect(self, num_clients: int) -> Roster:
        """Reach the federation's clients (once, before the first task)."""
        ...

    def train(self, tasks: Iterable[TrainTask]) -> Iterator[ClientReply]:
        """Train every task; one reply per task, in any order, failures included.

        The tasks are served as they are taken: a transport that trains one at a time should
        take the next only after the previous one trained (one client's factors in memory).
        Replies are yielded as they arrive and the driver validates (and, for a large round,
        spills to disk) each before it asks for the next, so a transport should not hold them.
        """
        ...


class InProcessTransport:
    """Every client trains in turn in this process, on the server's own model.

    The clients share the server's base model, which already holds every merged round, so the
    merges a task lists are not applied again here (they are still counted as traffic by the
    driver: a deployed client would have to receive them).
    """

    name = "in-process"

    def __init__(self, runner: ClientRunner) -> None:
        self.runner = runner

    def connect(self, num_clients: int) -> Roster:
        return Roster(clients=frozenset(range(num_clients)))

    def train(self, tasks: Iterable[TrainTask]) -> Iterator[ClientReply]:
        for task in tasks:
            yield self.runner.train(task)
