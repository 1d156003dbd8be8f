"""Rounds merged into the base weights (FLoRA), applied once each and in order, on any machine.

FLoRA merges every round's stacked update into the frozen base weights.  The server's model and
every client's model must hold the same merges: the server sends a client the merges it has not
applied yet (never a dense ``out x in`` total), and :class:`MergedBase` applies each one once.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedlora.errors import FedloraError
from fedlora.lora import MergedRound
from fedlora.model import AdaptedModel
from fedlora.runs.merged import MergedStore


class MergedBase:
    """The merges a model's base weights hold, up to round :attr:`round`.

    With a ``store`` every merge applied is also saved there, and a process that starts over (a
    Flower node runs one per message) catches up from its disk instead of from the server: it
    takes the stored merges up to the round the server says the node holds, and every later one
    from the server's list (a stored later round may be from a run that was killed and resumed).
    """

    def __init__(self, model: AdaptedModel, store: MergedStore | None = None) -> None:
        self.model = model
        self.store = store
        self.round = 0

    def apply(self, merged: Sequence[MergedRound], after: int) -> None:
        """Apply the merges of ``merged`` this model lacks; they follow round ``after``.

        A model that holds fewer merges than ``after`` cannot catch up from this list: that is an
        error (the sender then starts the client over from its first merge).
        """
        if self.round < after:
            self._catch_up(after)
        if self.round < after:
            raise FedloraError(
                f"the base weights hold merges up to round {self.round}, but the merges sent "
                f"start after round {after}"
            )
        for entry in merged:
            if entry.round > self.round:
                self.model.merge_into_base(entry.modules)
                self.round = entry.round
                if self.store is not None:
                    self.store.save(entry)

    def _catch_up(self, until: int) -> None:
        """Apply the stored merges this model lacks, up to round ``until``."""
        if self.store is None:
            return
        for entry in self.store.load(until):
            if entry.round > self.round:
                self.model.merge_into_base(entry.modules)
                self.round = entry.round
