"""What a large model needs to fit: gradient accumulation and activation checkpointing.

Accumulating ``k`` batches of ``b`` rows must make the step of one batch of ``k * b`` rows, and
checkpointing must change memory, never the numbers.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from fedlora.aggregation import GlobalState
from fedlora.errors import ConfigError
from fedlora.lora import LoraSettings
from fedlora.lora.update import ClientUpdate
from fedlora.model import AdaptedModel, TokenizedInstructions, TrainConfig, train_local
from fedlora.model.device import enable_checkpointing
from tests.model.builders import batch, tiny_model
from tests.model.test_causal import tiny_lm, tokenizer

LORA = LoraSettings(8.0)


def started(model: Any, head: list[str] | None = None) -> AdaptedModel:
    """``model`` adapted at rank 4 from a round-0 state whose B is not zero (A gets gradients)."""
    adapted = AdaptedModel(model, head_modules=head)
    state = GlobalState.initial(adapted.module_shapes(), dense=adapted.initial_dense(), seed=2)
    factors = state.factors_for(4, LORA)
    for name, f in factors.items():
        factors[name] = type(f)(A=f.A, B=torch.full_like(f.B, 0.05), alpha=f.alpha, r=f.r)
    adapted.activate(4, LORA)
    adapted.load(factors, state.dense)
    return adapted


def flat(update: ClientUpdate) -> Tensor:
    parts = [t.flatten() for f in update.modules.values() for t in (f.A, f.B)]
    return torch.cat(parts + [t.flatten() for t in update.dense.values()])


def split(rows: dict[str, Tensor], *sizes: int) -> list[dict[str, Tensor]]:
    out, start = [], 0
    for size in sizes:
        out.append({k: v[start : start + size] for k, v in rows.items()})
        start += size
    return out


# ---------------------------------------------------------------------- gradient accumulation


def test_accumulated_batches_make_the_step_of_one_big_batch() -> None:
    rows = batch(size=8, seed=4)
    sgd: dict[str, Any] = {"optimizer": "sgd", "lr": 0.5, "max_grad_norm": None}
    whole = started(tiny_model("bert"))
    train_local(whole, [rows], TrainConfig(steps=2, **sgd))
    parts = started(tiny_model("bert"))
    result = train_local(
        parts, split(rows, 3, 5), TrainConfig(steps=2, gradient_accumulation_steps=2, **sgd)
    )
    assert (result.steps, result.examples) == (2, 16)
    expected, got = flat(whole.extract(0, 8)), flat(parts.extract(0, 8))
    assert torch.allclose(got, expected, atol=1e-6)  # the 3 and 5 rows weigh 3/8 and 5/8


def test_a_causal_lm_step_weights_its_batches_by_labelled_tokens() -> None:
    data = TokenizedInstructions.from_pairs(
        ["w1 w2", "w3", "w4 w5 w6", "w7"],
        ["w8 w9 w10 w11 w12", "w13", "w14 w15", "w16 w17 w18"],
        tokenizer(),
        16,
    )
    rows = next(data.batches([0, 1, 2, 3], 4))
    sgd: dict[str, Any] = {"optimizer": "sgd", "lr": 0.5, "max_grad_norm": None}
    whole = started(tiny_lm("llama", seed=1), head=[])
    train_local(whole, [rows], TrainConfig(steps=1, **sgd))
    parts = started(tiny_lm("llama", seed=1), head=[])
    # Batches of 6 + 2 and 3 + 4 labelled tokens (responses and EOS): unequal shares.
    pieces = split(rows, 2, 2)
    assert [int((p["labels"][:, 1:] != -100).sum()) for p in pieces] == [8, 7]
    train_local(parts, pieces, TrainConfig(steps=1, gradient_accumulation_steps=2, **sgd))
    expected = flat(whole.extract(0, 4))
    assert torch.allclose(flat(parts.extract(0, 4)), expected, atol=1e-6)


def test_a_step_never_spans_two_epochs_and_schedules_count_steps() -> None:
    batches = split(batch(size=10, seed=5), 2, 2, 2, 2, 2)
    adapted = started(tiny_model("bert"))
    config = TrainConfig(epochs=2, gradient_accumulation_steps=2, schedule="linear")
    result = train_local(adapted, batches, config)
    assert (result.steps, result.examples) == (6, 20)  # 2 + 2 + 1 batches, twice


def test_accumulation_must_be_positive() -> None:
    from fedlora.config import load_config

    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        TrainConfig(gradient_accumulation_steps=0)
    with pytest.raises(ConfigError, match=r"train\.gradient_accumulation_steps"):
        load_config(None, ["train.gradient_accumulation_steps=0"])


# ---------------------------------------------------------------------- activation checkpointing


def layer_calls(adapted: AdaptedModel, steps: int) -> tuple[int, Tensor]:
    """Calls of the first decoder layer's MLP while training ``steps`` steps, and the update.

    Counted inside the layer (transformers checkpoints a layer's forward, keeping the layer's
    own hooks outside) and as the call starts (a recomputation stops once it has every tensor
    the backward needs, before the MLP returns).
    """
    calls = []
    network: Any = adapted.model  # a transformers model: get_decoder is not nn.Module's
    mlp = network.get_decoder().layers[0].mlp
    hook = mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    data = TokenizedInstructions.from_pairs(["w1 w2", "w3"], ["w4 w5", "w6"], tokenizer(), 16)
    try:
        train_local(adapted, lambda: data.batches([0, 1], 2), TrainConfig(steps=steps, lr=1e-2))
    finally:
        hook.remove()
    return len(calls), flat(adapted.extract(0, 2))


def test_checkpointing_recomputes_the_layers_and_changes_no_number() -> None:
    plain_calls, plain = layer_calls(started(tiny_lm("llama", seed=1), head=[]), steps=3)
    model = tiny_lm("llama", seed=1)
    enable_checkpointing(model)
    assert model.is_activation_checkpointing
    checkpointed = started(model, head=[])
    calls, update = layer_calls(checkpointed, steps=3)
    # The chunked loss's split check runs the decoder twice (once per model, in eval mode: not
    # checkpointed), then each step's forward runs again in its backward.
    assert (plain_calls, calls) == (2 + 3, 2 + 6)
    assert torch.allclose(update, plain, atol=1e-6)


def test_a_model_without_checkpointing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^train\.gradient_checkpointing: Linear does not"):
        enable_checkpointing(nn.Linear(2, 2))
