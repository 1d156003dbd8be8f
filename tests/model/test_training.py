"""Local training and evaluation: config checks, schedules, learning, metrics by hand."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from fedlora.aggregation import GlobalState
from fedlora.errors import ConfigError, FedloraError
from fedlora.lora import LoraSettings
from fedlora.model import (
    AdaptedModel,
    TrainConfig,
    evaluate,
    lr_factor,
    macro_f1,
    train_local,
)
from tests.model.builders import batch, tiny_model


def fresh_client(rank: int = 4, alpha: float = 8.0) -> AdaptedModel:
    """A tiny BERT with one adapter loaded from the round-0 global state."""
    adapted = AdaptedModel(tiny_model("bert"))
    state = GlobalState.initial(adapted.module_shapes(), dense=adapted.initial_dense(), seed=1)
    adapted.activate(rank, LoraSettings(alpha))
    adapted.load(state.factors_for(rank, LoraSettings(alpha)), state.dense)
    return adapted


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 1, "steps": 3}, "epochs or steps, not both"),
        ({"steps": 0}, "train.steps must be a positive integer"),
        ({"lr": 0.0}, "train.lr must be positive"),
        ({"optimizer": "adam"}, "'adamw' or 'sgd'"),
        ({"schedule": "step"}, "'constant', 'linear' or 'cosine'"),
        ({"momentum": 1.0}, "momentum"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_train_config_rejects_bad_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)  # type: ignore[arg-type]


def test_train_config_defaults_to_one_epoch() -> None:
    assert TrainConfig().epochs == 1
    assert TrainConfig(steps=5).epochs is None


def test_lr_factor_warmup_then_schedules() -> None:
    assert [lr_factor(s, 10, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # 6 decay steps after 4 warmup steps.
    assert [lr_factor(s, 10, 4, "linear") for s in (4, 7, 9)] == pytest.approx([1.0, 0.5, 1 / 6])
    cosine = [lr_factor(s, 10, 4, "cosine") for s in (4, 7, 9)]
    assert cosine == pytest.approx([1.0, 0.5, 0.5 * (1 + math.cos(math.pi * 5 / 6))])
    assert lr_factor(0, 10, 0, "linear") == 1.0
    with pytest.raises(ConfigError, match="needs the total number of steps"):
        lr_factor(3, None, 0, "cosine")


def test_training_learns_a_tiny_batch_and_leaves_eval_mode() -> None:
    adapted = fresh_client()
    data = [batch(size=8, seed=3)]
    before = evaluate(adapted, data)
    result = train_local(adapted, data, TrainConfig(steps=15, lr=5e-2))
    after = evaluate(adapted, data)
    assert result.steps == 15
    assert result.examples == 15 * 8
    assert after.loss < 0.5 * before.loss
    assert after.accuracy == 1.0 > before.accuracy
    assert not adapted.model.training
    assert all(p.grad is None for p in adapted.trainable_parameters())


def test_sgd_with_momentum_also_learns() -> None:
    adapted = fresh_client()
    data = [batch(size=8, seed=3)]
    before = evaluate(adapted, data).loss
    train_local(adapted, data, TrainConfig(steps=15, lr=0.5, optimizer="sgd", momentum=0.9))
    assert evaluate(adapted, data).loss < before


def test_steps_cycle_through_epochs_of_a_batch_function() -> None:
    adapted = fresh_client()
    calls = 0

    def epoch() -> list[dict[str, Tensor]]:
        nonlocal calls
        calls += 1
        return [batch(size=4, seed=calls), batch(size=2, seed=10 + calls)]

    result = train_local(adapted, epoch, TrainConfig(steps=5, lr=1e-3))
    assert (result.steps, result.examples, calls) == (5, 4 + 2 + 4 + 2 + 4, 3)
    result = train_local(adapted, epoch, TrainConfig(epochs=2, lr=1e-3, schedule="cosine"))
    assert (result.steps, result.examples, calls) == (4, 12, 5)


def test_one_shot_iterator_cannot_feed_two_epochs() -> None:
    adapted = fresh_client()

    def once() -> Iterator[dict[str, Tensor]]:
        yield batch()

    with pytest.raises(FedloraError, match="epoch 2 had no batches"):
        train_local(adapted, once(), TrainConfig(epochs=2))
    with pytest.raises(ConfigError, match="needs batches with a length"):
        train_local(adapted, once(), TrainConfig(epochs=1, schedule="linear"))
    assert not adapted.model.training


def test_regularizer_is_added_every_step_but_not_reported() -> None:
    adapted = fresh_client()
    data = [batch(size=6, seed=4)]
    calls = 0

    def penalty() -> Tensor:
        nonlocal calls
        calls += 1
        return 100.0 + torch.stack([B.square().sum() for _, B in adapted.lora_parameters()]).sum()

    plain = fresh_client()
    train_local(plain, data, TrainConfig(steps=3, lr=1e-2))
    result = train_local(adapted, data, TrainConfig(steps=3, lr=1e-2), regularizer=penalty)
    assert calls == 3
    assert result.mean_loss < 10.0
    # The penalty's gradient pulls B towards zero, so B differs from plain training.
    regularized = adapted.extract(0, 6).modules
    unregularized = plain.extract(1, 6).modules
    name = adapted.target_modules[0]
    assert not torch.allclose(regularized[name].B, unregularized[name].B)


def test_missing_labels_is_a_clear_error_and_restores_eval_mode() -> None:
    adapted = fresh_client()
    inputs = batch()
    del inputs["labels"]
    with pytest.raises(FedloraError, match="returned no loss"):
        train_local(adapted, [inputs], TrainConfig(steps=1))
    assert not adapted.model.training


class _FixedLogits(nn.Module):
    """Returns the logits row ``table[input_ids[:, 0]]``: a classifier with known outputs."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> object:
        class Output:
            logits = self.table[input_ids[:, 0]]

        return Output()


def test_evaluate_matches_a_hand_computation() -> None:
    table = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    model = _FixedLogits(table)
    rows = torch.tensor([[0], [0], [1], [1], [2]])
    labels = torch.tensor([0, 1, 1, 2, 2])  # predictions are 0, 0, 1, 1, 2
    batches = [
        {"input_ids": rows[:3], "attention_mask": torch.ones(3, 1), "labels": labels[:3]},
        {"input_ids": rows[3:], "attention_mask": torch.ones(2, 1), "labels": labels[3:]},
    ]
    result = evaluate(model, batches)

    def nll(row: list[float], label: int) -> float:
        return -(row[label] - math.log(sum(math.exp(v) for v in row)))

    expected_loss = (
        sum(nll(table[r].tolist(), int(y)) for r, y in zip(rows[:, 0], labels, strict=True)) / 5
    )
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.accuracy == pytest.approx(3 / 5)
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 1 fp 1 fn 1 -> 1/2; class 2: tp 1 fn 1 -> 2/3
    assert result.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert result.examples == 5


def test_macro_f1_counts_classes_in_labels_or_predictions() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert macro_f1(torch.tensor([0, 1, 1, 1, 0]), labels) == pytest.approx((0.5 + 0.8 + 0) / 3)
    # A predicted class absent from the labels counts with F1 0; an absent class does not count.
    assert macro_f1(torch.tensor([0, 0, 1, 1, 3]), labels) == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert macro_f1(labels, labels) == 1.0
    with pytest.raises(FedloraError, match="equal non-empty shapes"):
        macro_f1(torch.tensor([0]), labels)


def test_evaluate_on_the_adapted_model_uses_the_active_adapter() -> None:
    adapted = fresh_client()
    data = [batch(size=8, seed=3)]
    base_result = evaluate(adapted, data)
    train_local(adapted, data, TrainConfig(steps=10, lr=2e-2))
    trained = evaluate(adapted, data)
    adapted.activate(2, LoraSettings(8.0))  # a fresh adapter with the original head copy
    state = GlobalState.initial(adapted.module_shapes(), dense=adapted.initial_dense(), seed=1)
    adapted.load(state.factors_for(2, LoraSettings(8.0)), state.dense)
    assert evaluate(adapted, data).loss == pytest.approx(base_result.loss, rel=1e-5)
    assert trained.loss < base_result.loss
    with pytest.raises(FedloraError, match="batches were empty"):
        evaluate(adapted, [])


def test_lora_dropout_is_active_only_in_training_mode() -> None:
    adapted = AdaptedModel(tiny_model("bert"))
    state = GlobalState.initial(adapted.module_shapes(), dense=adapted.initial_dense(), seed=1)
    adapted.activate(4, LoraSettings(8.0, dropout=0.5))
    factors = {
        name: type(f)(A=f.A, B=torch.ones_like(f.B), alpha=f.alpha, r=f.r)
        for name, f in state.factors_for(4, LoraSettings(8.0)).items()
    }
    adapted.load(factors, state.dense)
    inputs = batch()
    with torch.no_grad():
        assert torch.equal(adapted(**inputs).logits, adapted(**inputs).logits)
        adapted.train()
        assert not torch.equal(adapted(**inputs).logits, adapted(**inputs).logits)
    adapted.eval()
