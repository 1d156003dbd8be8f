"""A causal LM trains on the chunked loss: the model's own loss and gradients, without its logits.

``train_local`` scores a causal LM's labelled positions from the decoder's hidden states, the
output layer applied a chunk of rows at a time (each chunk checkpointed).  It must give the loss
and the gradient of every trainable parameter that the model's ``outputs.loss`` gives, whatever
the chunk size, the masking, the padding and the gradient accumulation, and fall back to the
model's own loss where the output layer does not give the model's logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor
from transformers import LlamaForCausalLM

from fedlora.lora import LoraSettings
from fedlora.model import AdaptedModel, TrainConfig, train_local
from fedlora.model.device import enable_checkpointing
from fedlora.model.training import split_lm_head
from tests.model.test_causal import WORDS, padded_batches, random_factors, tiny_lm
from tests.model.test_memory_settings import flat

TARGETS = ["q_proj", "v_proj", "down_proj", "lm_head"]
"""LoRA on attention, the MLP and the output layer, whose gradients come through the chunks."""
PAD = WORDS.index("<pad>")


def adapted_lm(
    model: Any = None, *, dropout: float = 0.0, targets: list[str] | None = None
) -> AdaptedModel:
    """A tiny Llama with random non-zero factors (so that every factor gets a gradient)."""
    adapted = AdaptedModel(
        tiny_lm("llama", seed=1) if model is None else model,
        target_modules=TARGETS if targets is None else targets,
        head_modules=[],
    )
    adapted.activate(4, LoraSettings(8.0, dropout=dropout))
    adapted.load(random_factors(adapted, seed=11), {})
    return adapted


def step_gradients(
    adapted: AdaptedModel,
    batches: list[dict[str, Tensor]],
    *,
    chunked: bool,
    chunk_rows: int | None = None,
) -> tuple[dict[str, Tensor], float]:
    """The gradient of every trainable parameter, by name, of one ``train_local`` step over all
    ``batches`` (accumulated), as the optimizer would see it; and the step's mean loss."""
    names = {id(p): name for name, p in adapted.model.named_parameters()}
    grads: dict[str, Tensor] = {}

    def record(parameter: Tensor) -> None:
        assert parameter.grad is not None
        grads[names[id(parameter)]] = parameter.grad.clone()  # the last call has the whole step

    hooks = [
        # torch's Tensor.register_post_accumulate_grad_hook is unannotated.
        p.register_post_accumulate_grad_hook(record)  # type: ignore[no-untyped-call]
        for p in adapted.trainable_parameters()
    ]
    config = TrainConfig(
        steps=1,
        optimizer="sgd",
        lr=1e-3,
        max_grad_norm=None,
        gradient_accumulation_steps=len(batches),
    )
    try:
        result = train_local(adapted, batches, config, chunked_loss=chunked, chunk_rows=chunk_rows)
    finally:
        for hook in hooks:
            hook.remove()
    return grads, result.mean_loss


def assert_same_gradients(got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    trainable = {name for name in expected if "lora_" in name}
    assert got.keys() == expected.keys() == trainable
    assert any(name.startswith("lm_head.") for name in trainable)  # the head's LoRA is trained
    # Some gradients are zero in exact arithmetic and rounding noise in float32 (a query's in the
    # first layer, when only the first position is labelled: it attends to itself alone).  Both
    # paths round differently, so such a gradient is compared against a noise floor of 100 float32
    # eps of the largest gradient of all (hypothesis found noise of 2e-6 of it, 17 eps); a wrong
    # shift, mean or chunk moves gradients by a share of their own size, which rtol catches.
    scale = max(float(reference.abs().max()) for reference in expected.values())
    assert scale > 0
    noise = 100 * torch.finfo(torch.float32).eps * scale
    for name, reference in expected.items():
        torch.testing.assert_close(got[name], reference, rtol=1e-5, atol=noise, msg=name)


def head_rows(adapted: AdaptedModel, run: Callable[[], Any]) -> list[int]:
    """How many positions the output layer scored in each of its calls during ``run()``."""
    rows: list[int] = []
    network: Any = adapted.model  # a transformers model: get_output_embeddings is not nn.Module's
    head = network.get_output_embeddings()
    hook = head.register_forward_hook(lambda _, args, __: rows.append(args[0][..., 0].numel()))
    try:
        run()
    finally:
        hook.remove()
    return rows


def labelled(batch: dict[str, Tensor]) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


# ---------------------------------------------------------------------- loss and gradients


@pytest.mark.parametrize("chunk_rows", [1, 5, 12, None])
def test_chunked_gradients_equal_the_models_loss_gradients(chunk_rows: int | None) -> None:
    batches = padded_batches()  # prompts masked, right padding, accumulated over 2 batches
    tokens = [labelled(b) for b in batches]
    assert tokens == [12, 4]  # 5 divides neither, 12 only the first
    assert any((b["attention_mask"] == 0).any() for b in batches)
    expected, own = step_gradients(adapted_lm(), batches, chunked=False)
    adapted = adapted_lm()
    got: dict[str, Tensor] = {}
    losses: list[float] = []

    def run() -> None:
        grads, loss = step_gradients(adapted, batches, chunked=True, chunk_rows=chunk_rows)
        got.update(grads)
        losses.append(loss)

    rows = head_rows(adapted, run)
    assert_same_gradients(got, expected)
    largest = max(float(grad.abs().max()) for grad in expected.values())
    assert min(float(grad.abs().max()) for grad in expected.values()) > 1e-3 * largest
    assert losses[0] == pytest.approx(own, rel=1e-6)
    # The split check's two calls on one row of at most 16 positions, then every chunk twice
    # (forward, and recomputed in the backward pass): never more than chunk_rows positions.
    check, chunks = rows[:2], rows[2:]
    assert max(check) <= 16
    size = chunk_rows or sum(tokens)
    expected_chunks = [min(size, n - start) for n in tokens for start in range(0, n, size)]
    assert sorted(chunks) == sorted(expected_chunks * 2)


def test_no_logits_of_the_vocabulary_are_kept_for_the_backward_pass() -> None:
    batches = padded_batches()
    vocabulary = len(WORDS)

    def kept_rows(chunked: bool) -> int:
        """The most positions of any vocabulary-wide tensor that autograd saves."""
        sizes = [0]

        def pack(tensor: Tensor) -> Tensor:
            if tensor.ndim >= 2 and tensor.shape[-1] == vocabulary:
                sizes.append(tensor.shape[:-1].numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step_gradients(adapted_lm(), batches, chunked=chunked, chunk_rows=3)
        return max(sizes)

    assert kept_rows(chunked=False) >= batches[0]["input_ids"].numel()  # the whole logits
    assert kept_rows(chunked=True) == 0  # checkpointed chunks keep only their inputs


@st.composite
def lm_batches(draw: st.DrawFn) -> list[dict[str, Tensor]]:
    """1-3 batches of 1-3 rows: random tokens, a masked prompt, right padding (masked out)."""
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        rows, length = draw(st.integers(1, 3)), draw(st.integers(2, 10))
        ids = torch.tensor(
            draw(
                st.lists(
                    st.lists(st.integers(4, len(WORDS) - 1), min_size=length, max_size=length),
                    min_size=rows,
                    max_size=rows,
                )
            )
        )
        mask = torch.ones_like(ids)
        labels = ids.clone()
        for row in range(rows):
            real = draw(st.integers(1, length))
            prompt = draw(st.integers(0, real))
            ids[row, real:], mask[row, real:], labels[row, real:] = PAD, 0, -100
            labels[row, :prompt] = -100
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        assume(labelled(batch) > 0)  # the model's own mean over no token is NaN
        batches.append(batch)
    return batches


@given(lm_batches(), st.sampled_from([1, 2, 3, 5, None]))
def test_any_masking_padding_and_accumulation_gives_the_models_gradients(
    batches: list[dict[str, Tensor]], chunk_rows: int | None
) -> None:
    expected, own = step_gradients(adapted_lm(), batches, chunked=False)
    got, loss = step_gradients(adapted_lm(), batches, chunked=True, chunk_rows=chunk_rows)
    assert_same_gradients(got, expected)
    assert loss == pytest.approx(own, rel=1e-5)


# ---------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_training_run_on_chunks_ends_with_the_factors_of_the_models_loss(
    checkpointing: bool,
) -> None:
    batches = padded_batches()
    config = TrainConfig(
        epochs=3, lr=1e-2, gradient_accumulation_steps=2, schedule="linear", warmup_steps=1
    )
    start = flat(adapted_lm().extract(0, 1))
    reference = adapted_lm()
    expected = train_local(reference, batches, config, chunked_loss=False)
    adapted = adapted_lm()
    if checkpointing:  # the decoder's layers recompute their activations too
        enable_checkpointing(adapted.model)
    result = train_local(adapted, batches, config, chunk_rows=5)
    assert (result.steps, result.examples) == (expected.steps, expected.examples) == (3, 12)
    assert result.mean_loss == pytest.approx(expected.mean_loss, rel=1e-6)
    got, want = flat(adapted.extract(0, 1)), flat(reference.extract(0, 1))
    assert float((want - start).abs().max()) > 1e-2  # training moved the factors
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_float16_model_trains_on_chunks_with_loss_scaling() -> None:
    batches = padded_batches()
    config = TrainConfig(steps=2, lr=1e-2, gradient_accumulation_steps=2)
    start = flat(adapted_lm(tiny_lm("llama", seed=1).half()).extract(0, 1))
    runs = []
    for chunked in (False, True):
        adapted = adapted_lm(tiny_lm("llama", seed=1).half())
        result = train_local(adapted, batches, config, chunked_loss=chunked, chunk_rows=5)
        runs.append((result.mean_loss, flat(adapted.extract(0, 1))))
    (own_loss, want), (loss, got) = runs
    assert torch.isfinite(torch.tensor(loss))
    assert loss == pytest.approx(own_loss, rel=1e-3)
    assert float((want - start).abs().max()) > 1e-2
    # float16 logits of a chunk of rows are not bitwise those of the whole batch
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_a_batch_without_labelled_tokens_adds_nothing_to_its_step() -> None:
    batches = padded_batches()
    empty = {key: value.clone() for key, value in batches[1].items()}
    empty["labels"][:] = -100
    config = TrainConfig(steps=1, lr=1e-2, gradient_accumulation_steps=2)
    alone, padded = adapted_lm(), adapted_lm()
    train_local(alone, [batches[0]], TrainConfig(steps=1, lr=1e-2))
    result = train_local(padded, [batches[0], empty], config, chunk_rows=5)
    assert result.examples == 3 + 1
    torch.testing.assert_close(flat(padded.extract(0, 1)), flat(alone.extract(0, 1)))


# ---------------------------------------------------------------------- the split and its check


# transformers' PreTrainedModel.__init_subclass__ is unannotated.
class ScaledLlamaForCausalLM(LlamaForCausalLM):  # type: ignore[no-untyped-call]
    """Llama with its logits halved after the output layer (as Cohere's ``logit_scale``)."""

    def forward(self, *args: Any, labels: Tensor | None = None, **kwargs: Any) -> Any:
        output = super().forward(*args, **kwargs)
        output.logits = output.logits * 0.5
        if labels is not None:
            output.loss = self.loss_function(output.logits, labels, self.config.vocab_size)
        return output


def test_a_model_whose_output_layer_is_not_its_logits_trains_on_its_own_loss() -> None:
    plain = tiny_lm("llama", seed=1)
    scaled = ScaledLlamaForCausalLM(plain.config)
    scaled.load_state_dict(plain.state_dict())
    batches = padded_batches()
    inputs = {key: value for key, value in batches[0].items() if key != "labels"}
    # transformers' PreTrainedModel.eval is unannotated.
    evaluated = copy.deepcopy(scaled).eval()  # type: ignore[no-untyped-call]
    assert split_lm_head(evaluated, inputs) is None
    expected, own = step_gradients(adapted_lm(copy.deepcopy(scaled)), batches, chunked=False)
    adapted = adapted_lm(scaled)
    got: dict[str, Tensor] = {}
    losses: list[float] = []

    def run() -> None:
        grads, loss = step_gradients(adapted, batches, chunked=True, chunk_rows=2)
        got.update(grads)
        losses.append(loss)

    rows = head_rows(adapted, run)
    assert_same_gradients(got, expected)
    assert losses[0] == pytest.approx(own, rel=1e-6)
    _, unscaled = step_gradients(adapted_lm(plain), batches, chunked=True)
    assert abs(losses[0] - unscaled) > 0.05 * unscaled  # the scale matters to the loss
    # After the check's two calls, the model's own forward: whole batches, no chunks.
    assert rows[2:] == [b["input_ids"].numel() for b in batches]


def test_the_split_is_checked_without_dropout_and_the_modes_are_restored() -> None:
    adapted = adapted_lm(dropout=0.5)  # in train mode, two forwards would differ
    network = adapted.model
    batches = padded_batches()
    rows = head_rows(
        adapted, lambda: train_local(adapted, batches, TrainConfig(steps=1), chunk_rows=2)
    )
    assert max(rows[2:]) == 2  # the split held: the loss was chunked
    assert split_lm_head(network, {}) is not None  # remembered for the model
    fresh = adapted_lm(dropout=0.5)
    fresh.model.train()
    fresh_network: Any = fresh.model  # get_output_embeddings is the transformers model's own
    fresh_network.get_output_embeddings().eval()
    modes = [m.training for m in fresh.model.modules()]
    inputs = {key: value for key, value in batches[0].items() if key != "labels"}
    assert split_lm_head(fresh.model, inputs) is not None
    assert [m.training for m in fresh.model.modules()] == modes
    assert not all(modes) and any(modes)
