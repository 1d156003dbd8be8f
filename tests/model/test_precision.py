"""Device and precision: ``model.device`` resolution, and half-precision base models on the CPU.

LoRA factors (and a classifier's trained head) stay float32 on a bfloat16 or float16 base model,
and what a client hands back for exchange is float32 on the CPU.  The CUDA tests run only on a
machine with a GPU; without one they are skipped and say so.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedlora.aggregation import GlobalState
from fedlora.errors import ConfigError
from fedlora.lora import LoraSettings
from fedlora.model import AdaptedModel, TokenizedInstructions, TrainConfig, evaluate_lm, train_local
from fedlora.model.device import fork_rng, resolve_device, resolve_dtype
from tests.model.builders import batch, tiny_model
from tests.model.test_causal import tiny_lm, tokenizer

HALF = (torch.bfloat16, torch.float16)
no_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: run these on a GPU machine"
)

# ---------------------------------------------------------------------- device resolution


def test_auto_is_the_cpu_without_cuda_and_the_first_gpu_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_a_one_line_error_naming_the_key(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"^model\.device: '{spec}' asked for, .*no CUDA") as e:
        resolve_device(spec)
    assert "\n" not in str(e.value)


def test_a_gpu_index_beyond_the_devices_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"'cuda:2' .* 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")


def test_bfloat16_on_a_gpu_without_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _: "Tesla T4")
    gpu = torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"model\.dtype: Tesla T4 .* no native bfloat16"):
        resolve_dtype("bfloat16", gpu)
    assert resolve_dtype("float16", gpu) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _: (8, 0))
    assert resolve_dtype("bfloat16", gpu) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ConfigError, match=r"model\.dtype must be one of"):
        resolve_dtype("float64", torch.device("cpu"))


def test_the_config_checks_device_and_dtype_names() -> None:
    from fedlora.config import load_config

    assert (load_config(None).model.device, load_config(None).model.dtype) == ("auto", "float32")
    with pytest.raises(ConfigError, match=r"model\.device: must be 'auto', 'cpu', 'cuda' or"):
        load_config(None, ["model.device=gpu"])
    with pytest.raises(ConfigError, match=r"model\.device"):
        load_config(None, ["model.device=cuda:x"])
    with pytest.raises(ConfigError, match=r"model\.dtype: Input should be 'float32'"):
        load_config(None, ["model.dtype=float64"])
    assert load_config(None, ["model.device=cuda:3"]).model.device == "cuda:3"  # checked on load


# ---------------------------------------------------------------------- half precision on the CPU


def instructions() -> TokenizedInstructions:
    return TokenizedInstructions.from_pairs(
        ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9"],
        ["w10 w11 w12 w13", "w20 w21", "w30"],
        tokenizer(),
        16,
        template="Q {prompt} A",
    )


def trained_lm(dtype: torch.dtype, steps: int = 5) -> tuple[AdaptedModel, Any, float]:
    """A tiny Llama at ``dtype``, started from the round-0 state and trained a few steps."""
    adapted = AdaptedModel(tiny_lm("llama", seed=1).to(dtype), head_modules=[])
    lora = LoraSettings(8.0)
    adapted.activate(4, lora)
    adapted.load(GlobalState.initial(adapted.module_shapes(), seed=3).factors_for(4, lora), {})
    data = instructions()
    result = train_local(adapted, lambda: data.batches([0, 1, 2], 3), TrainConfig(steps=steps))
    return adapted, adapted.extract(0, 3), result.mean_loss


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_precision_llama_trains_float32_factors_and_hands_back_float32(
    dtype: torch.dtype,
) -> None:
    adapted, update, loss = trained_lm(dtype)
    assert adapted.dtype == dtype == adapted.base_weight(adapted.target_modules[0]).dtype
    assert {p.dtype for pair in adapted.lora_parameters() for p in pair} == {torch.float32}
    assert torch.isfinite(torch.tensor(loss))
    tensors = [t for f in update.modules.values() for t in (f.A, f.B)]
    assert {(t.dtype, t.device.type) for t in tensors} == {(torch.float32, "cpu")}
    assert any(float(f.B.abs().max()) > 0 for f in update.modules.values())  # B left zero
    evaluation = evaluate_lm(adapted, list(instructions().batches([0, 1, 2], 3)))
    assert torch.isfinite(torch.tensor(evaluation.loss))


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_training_follows_float32_training(dtype: torch.dtype) -> None:
    _, reference, _ = trained_lm(torch.float32)
    _, update, _ = trained_lm(dtype)
    expected = torch.cat([f.delta().flatten() for f in reference.modules.values()])
    got = torch.cat([f.delta().flatten() for f in update.modules.values()])
    assert float(expected.norm()) > 0
    assert float((got - expected).norm() / expected.norm()) < 0.2


def test_float16_training_is_loss_scaled_and_bfloat16_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[float] = []
    real = torch.amp.GradScaler

    def spy(*args: Any, **kwargs: Any) -> Any:
        scaler = real(*args, **kwargs)
        made.append(scaler.get_scale())
        return scaler

    monkeypatch.setattr(torch.amp, "GradScaler", spy)
    trained_lm(torch.bfloat16, steps=1)
    trained_lm(torch.float32, steps=1)
    assert made == []
    trained_lm(torch.float16, steps=1)
    assert made == [2.0**10]


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_precision_classifier_trains_its_head_in_float32(dtype: torch.dtype) -> None:
    adapted = AdaptedModel(tiny_model("bert").to(dtype))
    lora = LoraSettings(8.0)
    state = GlobalState.initial(adapted.module_shapes(), dense=adapted.initial_dense(), seed=1)
    assert {t.dtype for t in state.dense.values()} == {torch.float32}
    adapted.activate(4, lora)
    adapted.load(state.factors_for(4, lora), state.dense)
    trainable = adapted.trainable_parameters()
    assert {p.dtype for p in trainable} == {torch.float32}
    with torch.no_grad():
        assert adapted(**batch()).logits.dtype == dtype  # the layers around the head see no change
    result = train_local(adapted, [batch()], TrainConfig(steps=3, lr=1e-2))
    update = adapted.extract(0, 6)
    assert torch.isfinite(torch.tensor(result.mean_loss))
    assert {(t.dtype, t.device.type) for t in update.dense.values()} == {(torch.float32, "cpu")}
    moved = [float((update.dense[n] - state.dense[n]).abs().max()) for n in state.dense]
    assert max(moved) > 0


def test_fork_rng_restores_the_cpu_generator() -> None:
    before = torch.random.get_rng_state()
    with fork_rng(torch.device("cpu")):
        torch.manual_seed(123)
        torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), before)


# ---------------------------------------------------------------------- on a GPU


@no_cuda
def test_on_a_gpu_training_stays_there_and_the_update_comes_back_float32_on_the_cpu() -> None:
    gpu = resolve_device("cuda")
    dtype = torch.bfloat16 if torch.cuda.get_device_capability(gpu)[0] >= 8 else torch.float16
    adapted = AdaptedModel(tiny_lm("llama", seed=1).to(gpu, dtype), head_modules=[])
    lora = LoraSettings(8.0)
    adapted.activate(4, lora)
    adapted.load(GlobalState.initial(adapted.module_shapes(), seed=3).factors_for(4, lora), {})
    assert adapted.device.type == "cuda"
    assert {p.device.type for pair in adapted.lora_parameters() for p in pair} == {"cuda"}
    data = instructions()
    result = train_local(adapted, lambda: data.batches([0, 1, 2], 3), TrainConfig(steps=3))
    update = adapted.extract(0, 3)
    assert torch.isfinite(torch.tensor(result.mean_loss))
    tensors = [t for f in update.modules.values() for t in (f.A, f.B)]
    assert {(t.dtype, t.device.type) for t in tensors} == {(torch.float32, "cpu")}
    assert torch.isfinite(torch.tensor(evaluate_lm(adapted, list(data.batches([0, 1], 2))).loss))


@no_cuda
def test_fork_rng_on_a_gpu_restores_its_generator() -> None:
    gpu = resolve_device("cuda")
    before = torch.cuda.get_rng_state(gpu)
    with fork_rng(gpu):
        torch.manual_seed(123)
        torch.rand(3, device=gpu)
    assert torch.equal(torch.cuda.get_rng_state(gpu), before)
