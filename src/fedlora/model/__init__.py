"""The model layer: load a classifier or a causal LM, adapt it with swappable LoRA adapters,
train, evaluate.

Uses transformers and PEFT; imports only the LoRA state types from the layers above it.
"""

from fedlora.model.adapted import AdaptedModel
from fedlora.model.causal import load_causal_lm, tiered_ranks
from fedlora.model.generation import GenerationResult, evaluate_generation, generate_greedy
from fedlora.model.gguf import (
    SMOLLM2_ALIASES,
    cached_model_folder,
    convert_gguf,
    smollm2_gguf_path,
)
from fedlora.model.instructions import IGNORE_INDEX, TokenizedInstructions, apply_template
from fedlora.model.layout import AdapterLayout
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
    LMEvalResult,
    TrainConfig,
    TrainResult,
    evaluate,
    evaluate_lm,
    lr_factor,
    macro_f1,
    train_local,
)

__all__ = [
    "DEFAULT_TARGETS",
    "HEAD_NAMES",
    "IGNORE_INDEX",
    "MINILM_ALIASES",
    "SMOLLM2_ALIASES",
    "AdaptedModel",
    "AdapterLayout",
    "EvalResult",
    "GenerationResult",
    "LMEvalResult",
    "TokenizedInstructions",
    "TrainConfig",
    "TrainResult",
    "apply_template",
    "cached_model_folder",
    "convert_gguf",
    "default_head_modules",
    "default_target_modules",
    "evaluate",
    "evaluate_generation",
    "evaluate_lm",
    "generate_greedy",
    "linear_module_names",
    "load_causal_lm",
    "load_classifier",
    "lr_factor",
    "macro_f1",
    "resolve_head",
    "resolve_model_path",
    "resolve_targets",
    "smollm2_gguf_path",
    "tiered_ranks",
    "train_local",
]
