"""Which layers get LoRA adapters and which head layers are trained densely.

Targets follow PEFT's matching rule for a list of names: a target matches a module whose full name
equals it or ends with ``"." + target``.  Only projections can be targeted: ``torch.nn.Linear``
(weight ``out x in``) and GPT-2's ``Conv1D`` (weight stored transposed, ``in x out``), so that the
adapter's ``A (r x in)`` and ``B (out x r)`` line up with the layer's ``(out, in)``.

Defaults by ``model.config.model_type``:

- BERT (and MiniLM, which is a BERT), RoBERTa, ALBERT: ``query`` and ``value``, the attention
  projections the original LoRA paper (Hu et al.) adapts and PEFT's default for these models;
- DistilBERT: ``q_lin`` and ``v_lin``, its names for the same projections;
- LLaMA, Qwen2, Mistral: all seven projections (``q/k/v/o_proj``, ``gate/up/down_proj``), the
  usual choice for decoder LLMs;
- GPT-2: its four projections ``attn.c_attn`` (q, k, v fused), ``attn.c_proj``, ``mlp.c_fc`` and
  ``mlp.c_proj``.

Byun & Lee's communication counts need three projections per layer, not two: 552,960 LoRA
parameters per rank-20 client on DistilBERT is ``20 x 6 layers x 3 x (768 + 768)``.  The paper
does not say which three; ``model.target_modules = ["q_lin", "k_lin", "v_lin"]`` (BERT/MiniLM:
``["query", "key", "value"]``) reproduces the counts (a test checks them).

The classification head is trained densely (PEFT ``modules_to_save``): it is freshly initialised
for the task, so a low-rank update of it would make no sense.  By default it is every top-level
module named ``pre_classifier`` (DistilBERT), ``classifier`` (BERT, RoBERTa, ALBERT, DistilBERT) or
``score`` (decoder LLMs).  BERT's ``pooler`` stays frozen: it is pretrained, and training it
densely would add a ``hidden x hidden`` matrix to every upload.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from fedlora.errors import ConfigError

_ATTENTION_QV = ("query", "value")
_DECODER_PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": _ATTENTION_QV,
    "roberta": _ATTENTION_QV,
    "xlm-roberta": _ATTENTION_QV,
    "albert": _ATTENTION_QV,
    "distilbert": ("q_lin", "v_lin"),
    "llama": _DECODER_PROJECTIONS,
    "qwen2": _DECODER_PROJECTIONS,
    "mistral": _DECODER_PROJECTIONS,
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}
"""LoRA target layers per ``model_type`` (leaf names, matched as suffixes)."""

HEAD_NAMES: tuple[str, ...] = ("pre_classifier", "classifier", "score")
"""Top-level module names that form a sequence-classification head, in forward order."""


def model_type(model: nn.Module) -> str:
    """The Hugging Face ``model_type`` of ``model`` (``""`` when it has no config)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", ""))


def is_projection(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a GPT-2 style ``Conv1D``: a layer LoRA can adapt."""
    return isinstance(module, nn.Linear | Conv1D)


def projection_shape(module: nn.Module) -> tuple[int, int]:
    """``(out, in)`` of a projection, whichever way its weight is stored."""
    if isinstance(module, Conv1D):
        inputs, outputs = module.weight.shape  # Conv1D computes x @ W with W: in x out
        return int(outputs), int(inputs)
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    raise ConfigError(f"a {type(module).__name__} is not a projection (nn.Linear or Conv1D)")


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of the model's projections (``nn.Linear``, ``Conv1D``), in module order (call
    before wrapping)."""
    return [name for name, module in model.named_modules() if is_projection(module)]


def default_target_modules(model: nn.Module) -> list[str]:
    """The default LoRA targets for the model's architecture (see the module docstring)."""
    kind = model_type(model)
    if kind not in DEFAULT_TARGETS:
        raise ConfigError(
            f"target_modules: no default for model_type {kind!r} (known: "
            f"{', '.join(sorted(DEFAULT_TARGETS))}); give target_modules explicitly from its "
            f"linear layers: {_leaf_summary(model)}"
        )
    return list(DEFAULT_TARGETS[kind])


def default_head_modules(model: nn.Module) -> list[str]:
    """The top-level head modules that exist in ``model`` (may be empty for a bare encoder)."""
    children = dict(model.named_children())
    return [name for name in HEAD_NAMES if name in children]


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Full names of the linear layers matched by ``targets``, in module order.

    Raises ``ConfigError`` naming the first target that matches no linear layer, with the
    model's linear layer names, so that a typo or a wrong architecture is caught before training.
    """
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"target_modules must be a non-empty list of names, got {targets!r}")
    linear = linear_module_names(model)
    for target in targets:
        if not any(_matches(name, target) for name in linear):
            raise ConfigError(
                f"target_modules: {target!r} matches no linear layer of this "
                f"{model_type(model) or type(model).__name__} model; its linear layers are "
                f"{_leaf_summary(model)}"
            )
    return [name for name in linear if any(_matches(name, target) for target in targets)]


def resolve_head(model: nn.Module, head: Sequence[str]) -> list[str]:
    """Check that each head module exists (full names); returns them as a list."""
    if isinstance(head, str):
        raise ConfigError(f"head_modules must be a list of names, got the string {head!r}")
    modules = dict(model.named_modules())
    for name in head:
        if not name or name not in modules:
            top = ", ".join(name for name, _ in model.named_children())
            raise ConfigError(
                f"head_modules: {name!r} is not a module of this model (top-level modules: {top})"
            )
    if len(set(head)) != len(head):
        raise ConfigError(f"head_modules has duplicates: {list(head)}")
    return list(head)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _leaf_summary(model: nn.Module) -> str:
    """The distinct last components of the linear layer names, with one full name as example."""
    linear = linear_module_names(model)
    if not linear:
        return "none (the model has no nn.Linear layers)"
    leaves = sorted({name.rsplit(".", 1)[-1] for name in linear})
    return f"{', '.join(leaves)} (full names also work, e.g. {linear[0]!r})"
