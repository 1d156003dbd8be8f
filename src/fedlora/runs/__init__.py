"""Run directories: resolved config, per-round metrics, checkpoints, summaries and plots."""

from fedlora.runs import faults
from fedlora.runs.checkpoint import Checkpoint, Expected, load_checkpoint, save_checkpoint
from fedlora.runs.environment import note_environment, read_environment
from fedlora.runs.metrics import (
    ACCURACY,
    MACRO_F1,
    ROUGE_L,
    SCORE,
    Headline,
    RoundMetrics,
    headline,
    read_metrics,
    seconds_per_round,
)
from fedlora.runs.run_dir import ENVIRONMENT, RunDir

__all__ = [
    "ACCURACY",
    "ENVIRONMENT",
    "MACRO_F1",
    "ROUGE_L",
    "SCORE",
    "Checkpoint",
    "Expected",
    "Headline",
    "RoundMetrics",
    "RunDir",
    "faults",
    "headline",
    "load_checkpoint",
    "note_environment",
    "read_environment",
    "read_metrics",
    "save_checkpoint",
    "seconds_per_round",
]
