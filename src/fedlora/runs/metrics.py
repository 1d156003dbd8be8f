"""One line of metrics per round, written as JSON lines and CSV."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedlora.errors import FedloraError


@dataclass
class RoundMetrics:
    """What happened in one round (``None`` where a value was not measured that round).

    Round 0 is the run's starting point: the untuned global model's test metrics, the trivial
    baselines on the same test set (``extra["baselines"]``) and, for a loss-based rank policy
    with a probe, every client's score and who was promoted.  ``ranks`` are the ranks the
    clients trained with.  Communication is counted per kind: ``lora_params_*`` (LoRA factors),
    ``dense_params_*`` (dense tensors such as a classification head), ``merged_params_down``
    (FLoRA's merged updates a client must apply), and ``bytes_*`` of everything that travelled;
    ``extra["traffic"]`` has the same per client.
    """

    round: int
    clients: list[int]
    ranks: list[int]
    train_loss: float | None
    test_loss: float | None
    test_accuracy: float | None
    test_macro_f1: float | None
    bytes_up: int
    bytes_down: int
    seconds_train: float
    seconds_aggregate: float
    seconds_eval: float
    global_rank: int = 0
    test_rouge_l: float | None = None
    test_exact_match: float | None = None
    test_score: float | None = None
    lora_params_up: int = 0
    dense_params_up: int = 0
    lora_params_down: int = 0
    dense_params_down: int = 0
    merged_params_down: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluated(self) -> bool:
        return self.test_loss is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> RoundMetrics:
        return cls(**json.loads(line))


@dataclass(frozen=True)
class Headline:
    """The metric a run is judged by: accuracy for classifiers; for causal LMs the score, every
    test task by its own metric (exact match, or Rouge-L where copying the input cannot win)."""

    field: str
    label: str

    def value(self, row: RoundMetrics) -> float | None:
        value: float | None = getattr(row, self.field)
        return value


ACCURACY = Headline("test_accuracy", "test accuracy")
SCORE = Headline("test_score", "test score")
ROUGE_L = Headline("test_rouge_l", "test Rouge-L")
MACRO_F1 = Headline("test_macro_f1", "test macro-F1")


def headline(rows: Iterable[RoundMetrics]) -> Headline:
    """The score of a causal-LM run (Rouge-L for runs recorded before it existed), else accuracy."""
    rows = list(rows)
    if any(r.test_score is not None and r.test_rouge_l is not None for r in rows):
        return SCORE
    return ROUGE_L if any(r.test_rouge_l is not None for r in rows) else ACCURACY


def seconds_per_round(rows: Sequence[RoundMetrics]) -> float:
    """A run's recorded seconds (train, aggregate, evaluate) per round after round 0: the median
    round's, as a round during which the run sat paused (SIGSTOP) counts that pause."""
    rounds = [row for row in rows if row.round > 0]
    return statistics.median(
        row.seconds_train + row.seconds_aggregate + row.seconds_eval for row in rounds
    )


CSV_COLUMNS = [f.name for f in fields(RoundMetrics) if f.name not in ("clients", "ranks", "extra")]


def read_metrics(path: Path, *, repair_torn_tail: bool = False) -> list[RoundMetrics]:
    """All rounds of a ``metrics.jsonl`` file; a corrupt line is an error naming the line.

    With ``repair_torn_tail`` a last line cut short by a crash (no newline, not a record) is
    dropped instead: its round is run again on resume.
    """
    rows: list[RoundMetrics] = []
    if not path.exists():
        return rows
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(RoundMetrics.from_json(line))
        except (json.JSONDecodeError, TypeError) as error:
            if repair_torn_tail and number == len(lines) and not text.endswith("\n"):
                break
            raise FedloraError(f"{path} line {number}: not a metrics record ({error})") from None
    return rows


def write_metrics_csv(rows: Sequence[RoundMetrics], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_COLUMNS, "num_clients", "mean_rank"])
        for row in rows:
            values = asdict(row)
            mean_rank = sum(row.ranks) / len(row.ranks) if row.ranks else 0.0
            writer.writerow([*(values[c] for c in CSV_COLUMNS), len(row.clients), mean_rank])
