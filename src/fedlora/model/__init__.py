"""The model layer: load a classifier, adapt it with swappable LoRA adapters, train, evaluate.

Uses transformers and PEFT; imports only the LoRA state types from the layers above it.
"""

from fedlora.model.adapted import AdaptedModel, AdapterLayout
from fedlora.model.loading import MINILM_ALIASES, load_classifier, resolve_model_path
from fedlora.model.targets import (
    DEFAULT_TARGETS,
    HEAD_NAMES,
    default_head_modules,
    default_target_modules,
    linear_module_names,
    resolve_head,
    resolve_targets,
)
from fedlora.model.training import (
    EvalResult,
    TrainConfig,
    TrainResult,
    evaluate,
    lr_factor,
    macro_f1,
    train_local,
)

__all__ = [
    "DEFAULT_TARGETS",
    "HEAD_NAMES",
    "MINILM_ALIASES",
    "AdaptedModel",
    "AdapterLayout",
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "default_head_modules",
    "default_target_modules",
    "evaluate",
    "linear_module_names",
    "load_classifier",
    "lr_factor",
    "macro_f1",
    "resolve_head",
    "resolve_model_path",
    "resolve_targets",
    "train_local",
]
