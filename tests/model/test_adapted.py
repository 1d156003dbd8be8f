"""AdaptedModel: adapters per layout swapped in place on one base model, exact state transfer."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor

from fedlora.aggregation import GlobalState, self_pruning_penalty
from fedlora.errors import ConfigError, FedloraError
from fedlora.lora import FoldedFactors, LoraFactors, LoraSettings
from fedlora.model import AdaptedModel, TrainConfig, train_local
from tests.model.builders import ARCHITECTURES, batch, tiny_model

BERT_QUERY = "bert.encoder.layer.0.attention.self.query"


def mixed_ranks(adapted: AdaptedModel, first: int = 3, second: int = 7) -> dict[str, int]:
    """Alternate two ranks over the adapted modules (query-like vs value-like)."""
    return {name: first if i % 2 == 0 else second for i, name in enumerate(adapted.target_modules)}


def random_state(
    adapted: AdaptedModel, *, seed: int, scale: float = 0.3
) -> tuple[dict[str, LoraFactors], dict[str, Tensor]]:
    """Random non-zero factors for the active layout, and a random head."""
    layout = adapted.active_layout
    assert layout is not None
    generator = torch.Generator().manual_seed(seed)
    shapes = adapted.module_shapes()
    factors = {}
    for name, r in layout.ranks:
        out, inp = shapes[name]
        factors[name] = LoraFactors(
            A=torch.randn(r, inp, generator=generator) * scale,
            B=torch.randn(out, r, generator=generator) * scale,
            alpha=layout.lora.alpha,
            r=r,
            use_rslora=layout.lora.use_rslora,
        )
    dense = {
        name: torch.randn(shape, generator=generator) * scale
        for name, shape in adapted.dense_shapes().items()
    }
    return factors, dense


def logits(model: Any, inputs: Mapping[str, Tensor]) -> Tensor:
    with torch.no_grad():
        output = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    result: Tensor = output.logits
    return result


def reference_logits(
    base: Any,
    factors: Mapping[str, LoraFactors],
    dense: Mapping[str, Tensor],
    inputs: Mapping[str, Tensor],
    *,
    use_rslora: bool = False,
) -> Tensor:
    """Logits of a plain copy of the base whose weights are set to ``W + (alpha / r) B A``."""
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for name, f in factors.items():
            s = f.alpha / math.sqrt(f.r) if use_rslora else f.alpha / f.r
            reference.get_submodule(name).weight += s * (f.B @ f.A)
        for name, tensor in dense.items():
            reference.get_parameter(name).copy_(tensor)
    return logits(reference, inputs)


def test_names_are_canonical_and_stable_across_adapters() -> None:
    adapted = AdaptedModel(tiny_model("bert"))
    expected = {
        f"bert.encoder.layer.{i}.attention.self.{kind}": (32, 32)
        for i in range(2)
        for kind in ("query", "value")
    }
    assert adapted.module_shapes() == expected
    assert adapted.dense_shapes() == {"classifier.weight": (3, 32), "classifier.bias": (3,)}
    before = adapted.initial_dense()
    adapted.activate(2, LoraSettings(4.0))
    adapted.activate(mixed_ranks(adapted), LoraSettings(8.0))
    update = adapted.extract(0, 1)
    assert set(update.modules) == set(expected)
    assert set(update.dense) == {"classifier.weight", "classifier.bias"}
    assert adapted.module_shapes() == expected
    after = adapted.initial_dense()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_initial_dense_is_the_loaded_head_and_a_copy() -> None:
    base = tiny_model("bert")
    adapted = AdaptedModel(base)
    initial = adapted.initial_dense()
    assert torch.equal(initial["classifier.weight"], base.classifier.weight)
    initial["classifier.weight"].add_(1.0)
    assert not torch.equal(
        adapted.initial_dense()["classifier.weight"], initial["classifier.weight"]
    )
    # Training the adapter's head copy leaves the original (round-0) head alone.
    adapted.activate(2, LoraSettings(4.0))
    factors, dense = random_state(adapted, seed=0)
    adapted.load(factors, dense)
    assert torch.equal(
        adapted.initial_dense()["classifier.bias"], base.classifier.original_module.bias
    )
    assert not torch.equal(adapted.initial_dense()["classifier.bias"], dense["classifier.bias"])


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_adapters_swap_in_place_on_one_base_model(kind: str) -> None:
    base = tiny_model(kind)
    original = {id(p): p.numel() for p in base.parameters()}
    adapted = AdaptedModel(base)
    shapes = adapted.module_shapes()
    head_size = sum(math.prod(shape) for shape in adapted.dense_shapes().values())

    mixed = mixed_ranks(adapted)
    adapted.activate(mixed, LoraSettings(16.0))
    first_factors, first_dense = random_state(adapted, seed=1)
    adapted.load(first_factors, first_dense)
    adapted.activate(2, LoraSettings(4.0))
    second_factors, second_dense = random_state(adapted, seed=2)
    adapted.load(second_factors, second_dense)

    assert adapted.model is base
    now = {id(p): p.numel() for p in base.parameters()}
    assert set(original) <= set(now)  # no base tensor was replaced or copied
    lora_size = sum(
        r * (out + inp)
        for ranks in (mixed, dict.fromkeys(shapes, 2))
        for name, r in ranks.items()
        for out, inp in [shapes[name]]
    )
    assert sum(now.values()) - sum(original.values()) == lora_size + 2 * head_size
    assert adapted.num_adapters == 2

    inputs = batch()
    second_logits = logits(adapted, inputs)
    adapted.activate(mixed, LoraSettings(16.0))
    assert adapted.num_adapters == 2  # reused, not rebuilt
    update = adapted.extract(0, 3)
    for name, factors in first_factors.items():
        assert torch.equal(update.modules[name].A, factors.A)
        assert torch.equal(update.modules[name].B, factors.B)
    for name, tensor in first_dense.items():
        assert torch.equal(update.dense[name], tensor)
    assert not torch.allclose(logits(adapted, inputs), second_logits, atol=1e-4)


def test_load_extract_round_trip_is_exact() -> None:
    adapted = AdaptedModel(tiny_model("bert"))
    ranks = mixed_ranks(adapted, 4, 9)
    adapted.activate(ranks, LoraSettings(12.0, use_rslora=True))
    factors, dense = random_state(adapted, seed=5)
    adapted.load(factors, dense)
    update = adapted.extract(7, 42)
    assert update.client_id == 7
    assert update.num_examples == 42
    for name, given in factors.items():
        got = update.modules[name]
        assert (got.r, got.alpha, got.use_rslora) == (ranks[name], 12.0, True)
        assert got.A.dtype == torch.float32
        assert torch.equal(got.A, given.A)
        assert torch.equal(got.B, given.B)
    assert all(torch.equal(update.dense[name], dense[name]) for name in dense)
    # The update is a detached copy: changing the live adapter leaves it alone.
    A, _ = adapted.named_lora_parameters()[BERT_QUERY]
    with torch.no_grad():
        A.add_(1.0)
    assert torch.equal(update.modules[BERT_QUERY].A, factors[BERT_QUERY].A)
    assert not update.modules[BERT_QUERY].A.requires_grad


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("use_rslora", [False, True])
def test_forward_equals_base_with_explicit_update(kind: str, use_rslora: bool) -> None:
    base = tiny_model(kind)
    untouched = copy.deepcopy(base)
    adapted = AdaptedModel(base)
    adapted.activate(mixed_ranks(adapted, 2, 11), LoraSettings(24.0, use_rslora=use_rslora))
    factors, dense = random_state(adapted, seed=3)
    adapted.load(factors, dense)
    inputs = batch()
    expected = reference_logits(untouched, factors, dense, inputs, use_rslora=use_rslora)
    got = logits(adapted, inputs)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    # The update matters: the base alone is far from it.
    assert not torch.allclose(logits(untouched, inputs), expected, atol=1e-3)


def test_forward_before_activation_is_the_base_model() -> None:
    base = tiny_model("bert")
    untouched = copy.deepcopy(base)
    adapted = AdaptedModel(base)
    inputs = batch()
    assert torch.equal(logits(adapted, inputs), logits(untouched, inputs))


def test_round_zero_global_state_loads_and_leaves_the_base_function_unchanged() -> None:
    base = tiny_model("bert")
    untouched = copy.deepcopy(base)
    adapted = AdaptedModel(base)
    state = GlobalState.initial(adapted.module_shapes(), dense=adapted.initial_dense(), seed=4)
    ranks = mixed_ranks(adapted, 3, 6)
    adapted.activate(ranks, LoraSettings(16.0))
    adapted.load(state.factors_for(ranks, LoraSettings(16.0)), state.dense)
    inputs = batch()
    assert torch.allclose(logits(adapted, inputs), logits(untouched, inputs), atol=1e-6)
    A, B = adapted.named_lora_parameters()[BERT_QUERY]
    assert A.abs().sum() > 0  # fresh slots: A random, B zero
    assert torch.equal(B, torch.zeros_like(B))


def test_merge_into_base_adds_exactly_B_times_A() -> None:
    adapted = AdaptedModel(tiny_model("bert"))
    adapted.activate(4, LoraSettings(8.0))
    factors, dense = random_state(adapted, seed=6)
    adapted.load(factors, dense)
    inputs = batch()
    before_logits = logits(adapted, inputs)
    weights = {name: adapted.base_weight(name).detach().clone() for name in adapted.target_modules}
    generator = torch.Generator().manual_seed(7)
    update = FoldedFactors(
        A=torch.randn(5, 32, generator=generator), B=torch.randn(32, 5, generator=generator)
    )
    adapted.merge_into_base(
        {
            BERT_QUERY: update,
            "bert.encoder.layer.1.attention.self.value": FoldedFactors.empty(32, 32, torch.float32),
        }
    )
    for name, weight in weights.items():
        expected = weight + update.B @ update.A if name == BERT_QUERY else weight
        assert torch.equal(adapted.base_weight(name), expected)
    assert not torch.allclose(logits(adapted, inputs), before_logits, atol=1e-4)
    # The adapter itself is untouched.
    assert torch.equal(adapted.extract(0, 1).modules[BERT_QUERY].A, factors[BERT_QUERY].A)
    with pytest.raises(FedloraError, match="update is 32 x 16"):
        adapted.merge_into_base(
            {BERT_QUERY: FoldedFactors(A=torch.ones(1, 16), B=torch.ones(32, 1))}
        )
    with pytest.raises(FedloraError, match="unknown modules"):
        adapted.merge_into_base({"bert.pooler.dense": update})


def test_freeze_A_trains_only_B_and_survives_adapter_switches() -> None:
    adapted = AdaptedModel(tiny_model("bert"))
    adapted.activate(3, LoraSettings(6.0))
    adapted.freeze_A()
    factors, dense = random_state(adapted, seed=8)
    adapted.load(factors, dense)
    trainable = {id(p) for p in adapted.trainable_parameters()}
    for A, B in adapted.lora_parameters():
        assert id(A) not in trainable and not A.requires_grad
        assert id(B) in trainable and B.requires_grad
    train_local(adapted, [batch()], TrainConfig(steps=2, lr=1e-2))
    update = adapted.extract(0, 6)
    for name, given in factors.items():
        assert torch.equal(update.modules[name].A, given.A)
        assert not torch.equal(update.modules[name].B, given.B)

    # A new adapter: PEFT marks its A trainable, we re-freeze it.
    adapted.activate(5, LoraSettings(6.0))
    assert all(not A.requires_grad for A, _ in adapted.lora_parameters())
    adapted.freeze_A(False)
    assert all(A.requires_grad for A, _ in adapted.lora_parameters())
    assert len(adapted.trainable_parameters()) == 2 * 4 + 2


def test_only_the_active_adapter_is_trainable() -> None:
    adapted = AdaptedModel(tiny_model("distilbert"))
    adapted.activate(2, LoraSettings(4.0))
    adapted.activate(3, LoraSettings(4.0))
    trainable = {id(p) for p in adapted.trainable_parameters()}
    requiring = {id(p) for p in adapted.model.parameters() if p.requires_grad}
    assert trainable == requiring
    assert len(trainable) == 2 * 4 + 4  # A and B on 4 modules, pre_classifier and classifier
    assert all(A.shape[0] == 3 for A, _ in adapted.lora_parameters())


def test_hetlora_penalty_has_gradients_through_live_parameters() -> None:
    adapted = AdaptedModel(tiny_model("bert"))
    adapted.activate(4, LoraSettings(8.0))
    factors, dense = random_state(adapted, seed=9)
    adapted.load(factors, dense)
    penalty = self_pruning_penalty(adapted.lora_parameters(), gamma=0.5, lam=1.0)
    torch.autograd.backward(penalty)
    for A, B in adapted.lora_parameters():
        assert A.grad is not None and B.grad is not None
        assert A.grad[2:].abs().sum() > 0 and B.grad[:, 2:].abs().sum() > 0
        assert torch.equal(A.grad[:2], torch.zeros_like(A.grad[:2]))  # kept slots: no push


def test_load_refuses_mismatched_state() -> None:
    adapted = AdaptedModel(tiny_model("bert"))
    with pytest.raises(FedloraError, match="no adapter is active"):
        adapted.extract(0, 1)
    adapted.activate(mixed_ranks(adapted), LoraSettings(8.0))
    factors, dense = random_state(adapted, seed=10)

    wrong_shape = dict(factors)
    f = factors[BERT_QUERY]
    wrong_shape[BERT_QUERY] = LoraFactors(A=f.A[:, :16], B=f.B, alpha=f.alpha, r=f.r)
    with pytest.raises(FedloraError, match=r"A has shape \(3, 16\), the adapter needs \(3, 32\)"):
        adapted.load(wrong_shape, dense)

    wrong_alpha = dict(factors)
    wrong_alpha[BERT_QUERY] = LoraFactors(A=f.A, B=f.B, alpha=16.0, r=f.r)
    with pytest.raises(FedloraError, match=r"alpha=16\.0"):
        adapted.load(wrong_alpha, dense)

    missing = {name: value for name, value in factors.items() if name != BERT_QUERY}
    with pytest.raises(FedloraError, match="missing"):
        adapted.load(missing, dense)
    with pytest.raises(FedloraError, match="dense must cover"):
        adapted.load(factors, {})
    adapted.load(factors, dense)  # the valid state loads

    # A bad tensor in the last module leaves the whole adapter as it was: no partial load.
    other, other_dense = random_state(adapted, seed=12)
    last = adapted.target_modules[-1]
    g = other[last]
    other[last] = LoraFactors(A=g.A, B=g.B[:16], alpha=g.alpha, r=g.r)
    with pytest.raises(FedloraError, match="B has shape"):
        adapted.load(other, other_dense)
    kept = adapted.extract(0, 1)
    assert all(torch.equal(kept.modules[name].A, factors[name].A) for name in factors)
    assert torch.equal(kept.dense["classifier.weight"], dense["classifier.weight"])


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        (0, "rank 0 is outside 1..32"),
        (33, "rank 33 is outside 1..32"),
        (True, "rank True"),
        ({"bert.encoder.layer.0.attention.self.key": 2}, "unknown"),
    ],
)
def test_invalid_rank_maps_are_refused(ranks: Any, message: str) -> None:
    adapted = AdaptedModel(tiny_model("bert"))
    with pytest.raises(ConfigError, match=message):
        adapted.activate(ranks, LoraSettings(8.0))
    assert adapted.num_adapters == 0


def test_least_recently_used_adapters_are_evicted() -> None:
    adapted = AdaptedModel(tiny_model("bert"), max_adapters=2)
    first = adapted.activate(2, LoraSettings(4.0))
    second = adapted.activate(3, LoraSettings(4.0))
    adapted.activate(2, LoraSettings(4.0))  # touch the first: the second is now the oldest
    counts = sum(p.numel() for p in adapted.model.parameters())
    third = adapted.activate(4, LoraSettings(4.0))
    assert adapted.layouts() == [first, third]
    assert second not in adapted.layouts()
    removed = 4 * 3 * (32 + 32) + 3 * 32 + 3
    added = 4 * 4 * (32 + 32) + 3 * 32 + 3
    assert sum(p.numel() for p in adapted.model.parameters()) == counts - removed + added
    factors, dense = random_state(adapted, seed=11)
    adapted.load(factors, dense)
    assert adapted(**batch()).loss.isfinite()


def test_adapter_creation_leaves_global_rng_alone_and_is_reproducible() -> None:
    state = torch.random.get_rng_state()
    one = AdaptedModel(tiny_model("bert"), init_seed=5)
    one.activate(mixed_ranks(one), LoraSettings(8.0))
    assert torch.equal(torch.random.get_rng_state(), state)
    two = AdaptedModel(tiny_model("bert"), init_seed=5)
    two.activate(mixed_ranks(two), LoraSettings(8.0))
    three = AdaptedModel(tiny_model("bert"), init_seed=6)
    three.activate(mixed_ranks(three), LoraSettings(8.0))
    a1 = one.extract(0, 1).modules[BERT_QUERY].A
    assert torch.equal(a1, two.extract(1, 1).modules[BERT_QUERY].A)
    assert not torch.equal(a1, three.extract(2, 1).modules[BERT_QUERY].A)
