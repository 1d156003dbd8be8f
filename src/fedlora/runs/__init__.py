"""Run directories: resolved config, per-round metrics, checkpoints, summaries and plots."""

from fedlora.runs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedlora.runs.metrics import RoundMetrics, read_metrics
from fedlora.runs.run_dir import RunDir

__all__ = [
    "Checkpoint",
    "RoundMetrics",
    "RunDir",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
]
