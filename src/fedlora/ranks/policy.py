"""The rank-policy contract: which :class:`RankTier` each client trains, and when that changes.

A policy is asked once for the initial allocation (:meth:`RankPolicy.assign`). Loss-based policies
may change it once clients have been scored (:meth:`RankPolicy.observe_losses`). Random policies
derive a fresh ``numpy.random.default_rng(seed)`` inside ``assign``, so the allocation is a pure
function of ``(options, seed, num_clients)``: the in-process runner, a Flower ServerApp and a
resumed run all get the same one, and no global RNG is touched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from fedlora.errors import ConfigError, FedloraError
from fedlora.ranks._checks import check_num_clients
from fedlora.ranks.tier import RankTier

ScoreOn = Literal["server", "local"]


@dataclass(frozen=True)
class Scoring:
    """Where a client's score is measured: ``"server"``, the loss of its trained adapter on one
    common validation set of ``rows`` rows held out of every client; or ``"local"``, on a share
    of the client's own rows."""

    on: ScoreOn
    rows: int


_STATE_KEYS = frozenset({"policy", "options", "num_clients", "tiers", "assignment", "extra"})


class RankPolicy(ABC):
    """Allocates a rank tier to every client index ``0 .. num_clients - 1``.

    Subclasses implement :meth:`_allocate` and :meth:`options`; policies that adapt to training
    override :meth:`observe_losses` and keep their extra state in :meth:`_extra_state`.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self._allocation: list[RankTier] | None = None

    # the contract -----------------------------------------------------------------------------

    def assign(self, num_clients: int) -> list[RankTier]:
        """The initial allocation, one tier per client index; calling again starts over."""
        allocation = self._allocate(check_num_clients(num_clients))
        self._allocation = list(allocation)
        self._reset()
        return list(allocation)

    def observe_losses(self, losses: Mapping[int, float]) -> list[RankTier] | None:
        """Validation losses by client index; the new allocation, or None if unchanged.

        The default policy never adapts.
        """
        del losses
        return None

    def wants_scores(self, round_index: int) -> bool:
        """True when the runner should score the clients that train in ``round_index`` and pass
        the scores to :meth:`observe_losses` (round 0: every client, before round 1)."""
        del round_index
        return False

    @property
    def scoring(self) -> Scoring | None:
        """How clients are scored when :meth:`wants_scores` (``None``: the policy never asks)."""
        return None

    @property
    def wants_high_quality_clients(self) -> bool:
        """True when the allocation depends on which clients hold high-quality data; the runner
        then calls :meth:`prefer` with them before :meth:`assign`."""
        return False

    def prefer(self, clients: Sequence[int]) -> None:  # noqa: B027 (an optional hook)
        """The clients the allocation should favour (the partition's high-quality ones)."""

    def possible_tiers(self) -> list[RankTier]:
        """Every tier a client may train during the run (the allocation and any promotion)."""
        return list(self._require_allocation())

    @property
    def allocation(self) -> list[RankTier] | None:
        """The current allocation (after :meth:`assign`, promotions and :meth:`load_state_dict`)."""
        return None if self._allocation is None else list(self._allocation)

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The constructor options, JSON-ready: ``type(p)(**p.options())`` rebuilds the policy."""

    def describe(self) -> str:
        """One line for logs: the policy, its options and, once assigned, the tier counts."""
        shown = ", ".join(f"{key}={_show(value)}" for key, value in self.options().items())
        line = f"{self.name}({shown})"
        if self._allocation is not None:
            counts = Counter(self._allocation)
            ordered = sorted(counts.items(), key=lambda item: (item[0].max_rank, item[0].name))
            summary = ", ".join(f"{tier.name}×{count}" for tier, count in ordered)
            line += f": {len(self._allocation)} clients {summary}"
        return line

    # checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: options, the current allocation (tier table + index per client)."""
        state: dict[str, Any] = {"policy": self.name, "options": self.options()}
        if self._allocation is None:
            state.update(num_clients=None, tiers=[], assignment=[])
        else:
            table: dict[RankTier, int] = {}
            assignment = [table.setdefault(tier, len(table)) for tier in self._allocation]
            state.update(
                num_clients=len(self._allocation),
                tiers=[tier.to_dict() for tier in table],
                assignment=assignment,
            )
        state["extra"] = self._extra_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` output; refuses state saved by another policy or options."""
        missing = sorted(_STATE_KEYS - set(state))
        if missing:
            raise FedloraError(f"rank policy state is missing key {missing[0]!r}")
        if state["policy"] != self.name:
            raise ConfigError(
                f"rank policy state was saved by {state['policy']!r}, not {self.name!r}"
            )
        if _normalised(state["options"]) != _normalised(self.options()):
            raise ConfigError(
                f"rank policy {self.name!r} options changed since the state was saved: "
                f"saved {state['options']!r}, now {self.options()!r}"
            )
        tiers = [RankTier.from_dict(tier, "rank policy state tier") for tier in state["tiers"]]
        assignment = state["assignment"]
        if state["num_clients"] is None:
            self._allocation = None
        else:
            if len(assignment) != state["num_clients"] or any(
                not isinstance(i, int) or not 0 <= i < len(tiers) for i in assignment
            ):
                raise FedloraError("rank policy state has an invalid tier assignment")
            self._allocation = [tiers[i] for i in assignment]
        self._load_extra_state(state["extra"])

    # hooks for subclasses ---------------------------------------------------------------------

    @abstractmethod
    def _allocate(self, num_clients: int) -> list[RankTier]:
        """The initial allocation for a validated ``num_clients``."""

    def _reset(self) -> None:  # noqa: B027 (an optional hook, not an abstract method)
        """Forget adaptive state after a fresh :meth:`assign`."""

    def _extra_state(self) -> dict[str, Any]:
        """Policy-specific JSON-ready state beyond the allocation."""
        return {}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Restores :meth:`_extra_state` output."""
        del extra

    def tier_of(self, client: int) -> RankTier:
        """The tier client ``client`` trains now."""
        return self._require_allocation()[client]

    def _require_allocation(self) -> list[RankTier]:
        if self._allocation is None:
            raise FedloraError(f"rank policy {self.name!r}: call assign(num_clients) first")
        return self._allocation


def _show(value: object) -> str:
    """Compact option values for :meth:`RankPolicy.describe`: tiers by name."""
    if isinstance(value, dict) and "patterns" in value and "name" in value:
        return str(value["name"])
    if isinstance(value, list):
        if len(value) > 8:
            return f"[{len(value)} items]"
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)


def _normalised(value: object) -> object:
    """Options compared as JSON would store them (tuples become lists)."""
    if isinstance(value, Mapping):
        return {str(k): _normalised(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalised(item) for item in value]
    return value
