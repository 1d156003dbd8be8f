"""Instruction tuning: loaders, a download-free task generator, task splits, prompts, metrics,
and the copy-the-input baseline."""

from fedlora.instruct.baselines import copy_input, copy_input_scores
from fedlora.instruct.examples import InstructionData, InstructionExample
from fedlora.instruct.generator import TASK_FAMILIES, available_task_count, generate_tasks
from fedlora.instruct.loaders import (
    known_hub_datasets,
    load_alpaca,
    load_dolly,
    load_instruction_dataset,
    load_natural_instructions,
)
from fedlora.instruct.metrics import (
    EXACT_MATCH,
    ROUGE_L,
    TASK_METRICS,
    TaskScores,
    exact_match,
    normalize_answer,
    rouge_l,
    score_predictions,
    score_tasks,
    weighted_task_scores,
)
from fedlora.instruct.prompts import PROMPT_TEMPLATES, chat_messages, format_prompt
from fedlora.instruct.split import (
    task_partition,
    tasks_needed,
    train_test_split_per_task,
    unseen_count,
)

__all__ = [
    "EXACT_MATCH",
    "PROMPT_TEMPLATES",
    "ROUGE_L",
    "TASK_FAMILIES",
    "TASK_METRICS",
    "InstructionData",
    "InstructionExample",
    "TaskScores",
    "available_task_count",
    "chat_messages",
    "copy_input",
    "copy_input_scores",
    "exact_match",
    "format_prompt",
    "generate_tasks",
    "known_hub_datasets",
    "load_alpaca",
    "load_dolly",
    "load_instruction_dataset",
    "load_natural_instructions",
    "normalize_answer",
    "rouge_l",
    "score_predictions",
    "score_tasks",
    "task_partition",
    "tasks_needed",
    "train_test_split_per_task",
    "unseen_count",
    "weighted_task_scores",
]
