"""The in-memory instruction dataset every instruction loader and the task generator return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedlora.errors import ConfigError
from fedlora.instruct.metrics import ROUGE_L, TASK_METRICS


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-following example; ``input`` is ``""`` when the instruction stands alone.

    ``metric`` (one of :data:`~fedlora.instruct.metrics.TASK_METRICS`) scores a generation for
    it; every example of a task has the same.  Loaded datasets keep Rouge-L, FlexLoRA's metric.
    """

    instruction: str
    input: str
    output: str
    task: str
    metric: str = ROUGE_L


@dataclass(frozen=True)
class InstructionData:
    """Instruction examples, each tagged with the task it belongs to (one task per client)."""

    examples: list[InstructionExample]
    name: str

    def __post_init__(self) -> None:
        metrics: dict[str, str] = {}
        for i, ex in enumerate(self.examples):
            if not isinstance(ex, InstructionExample):
                raise ConfigError(
                    f"dataset {self.name!r}: example {i} is a {type(ex).__name__}, "
                    "not an InstructionExample"
                )
            if not ex.task:
                raise ConfigError(f"dataset {self.name!r}: example {i} has an empty task name")
            if ex.metric not in TASK_METRICS:
                raise ConfigError(
                    f"dataset {self.name!r}: example {i} has metric {ex.metric!r}; "
                    f"valid metrics: {', '.join(TASK_METRICS)}"
                )
            if metrics.setdefault(ex.task, ex.metric) != ex.metric:
                raise ConfigError(
                    f"dataset {self.name!r}: task {ex.task!r} is scored by both "
                    f"{metrics[ex.task]!r} and {ex.metric!r} (example {i}); a task has one metric"
                )

    def __len__(self) -> int:
        return len(self.examples)

    def tasks(self) -> list[str]:
        """The task names in order of first appearance."""
        return list(dict.fromkeys(ex.task for ex in self.examples))

    def by_task(self) -> dict[str, npt.NDArray[np.int64]]:
        """The example indices of each task, tasks in order of first appearance."""
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(self.examples):
            groups.setdefault(ex.task, []).append(i)
        return {task: np.asarray(idx, dtype=np.int64) for task, idx in groups.items()}

    def subset(self, indices: Sequence[int] | npt.NDArray[np.integer]) -> InstructionData:
        """The examples at ``indices`` in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise ConfigError(
                f"dataset {self.name!r}: subset index out of range for {len(self)} examples"
            )
        return InstructionData([self.examples[i] for i in idx.tolist()], self.name)
