"""A rich progress bar over rounds that shows the latest loss, accuracy and macro-F1."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedlora.runs import RoundMetrics


class RoundProgress:
    """``with RoundProgress(label, rounds) as bar: ... bar.update(row)``; silent if disabled."""

    def __init__(self, label: str, rounds: int, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task("rounds", total=rounds, label=label, status="starting")

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, row: RoundMetrics) -> None:
        self._progress.update(self._task, completed=row.round, status=round_status(row))


def round_status(row: RoundMetrics) -> str:
    """Clients, train loss, and the test scores of an evaluated round (macro-F1 beside accuracy)."""
    loss = "no update" if row.train_loss is None else f"loss {row.train_loss:.3f}"
    status = f"{len(row.clients)} clients  {loss}"
    if row.test_rouge_l is not None:
        if row.test_score is not None:
            status += f"  score {row.test_score:.3f}"
        status += f"  rouge-L {row.test_rouge_l:.3f}"
    elif row.test_accuracy is not None:
        status += f"  acc {row.test_accuracy:.3f}"
        if row.test_macro_f1 is not None:
            status += f"  macro-F1 {row.test_macro_f1:.3f}"
    return status
