"""Causal LMs: tiered LoRA ranks, instruction batches, LM training and greedy generation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import Tensor
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fedlora.errors import ConfigError
from fedlora.lora import LoraFactors, LoraSettings
from fedlora.model import (
    IGNORE_INDEX,
    AdaptedModel,
    TokenizedInstructions,
    TrainConfig,
    evaluate_generation,
    evaluate_lm,
    generate_greedy,
    load_causal_lm,
    tiered_ranks,
    train_local,
)

WORDS = ["<unk>", "<bos>", "<eos>", "<pad>", *(f"w{i}" for i in range(40)), "Q", "A", ":"]
ARCHS = ("llama", "qwen2")
TIERS = {"self_attn": 4, "mlp": 8}


def tokenizer(*, pad: bool = True) -> Any:
    """A word-level tokenizer that prepends <bos>; with ``pad=False`` it has no pad token."""
    backend = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    extra = {"pad_token": "<pad>"} if pad else {}
    # transformers' PreTrainedTokenizerFast.__init__ is unannotated.
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", **extra
    )


def tiny_lm(kind: str, *, seed: int = 0) -> Any:
    """A 2-layer, hidden-32 causal LM (grouped-query attention: 4 heads, 2 key/value heads)."""
    common: dict[str, Any] = {
        "vocab_size": len(WORDS),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "initializer_range": 0.2,  # logits large enough to be learned through LoRA alone
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "llama":
            model: Any = LlamaForCausalLM(LlamaConfig(**common))
        else:
            model = Qwen2ForCausalLM(Qwen2Config(**common))
    return model.eval()


def random_factors(adapted: AdaptedModel, *, seed: int) -> dict[str, LoraFactors]:
    layout = adapted.active_layout
    assert layout is not None
    generator = torch.Generator().manual_seed(seed)
    shapes = adapted.module_shapes()
    factors = {}
    for name, r in layout.ranks:
        out, inp = shapes[name]
        factors[name] = LoraFactors(
            A=torch.randn(r, inp, generator=generator) * 0.3,
            B=torch.randn(out, r, generator=generator) * 0.3,
            alpha=layout.lora.alpha,
            r=r,
        )
    return factors


def logits(model: Any, ids: Tensor) -> Tensor:
    with torch.no_grad():
        result: Tensor = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return result


# ---------------------------------------------------------------------- adapters


@pytest.mark.parametrize("kind", ARCHS)
def test_tiered_ranks_give_peft_shapes_and_the_explicit_update(kind: str) -> None:
    base = tiny_lm(kind)
    reference = copy.deepcopy(base)
    adapted = AdaptedModel(base, target_modules=None, head_modules=[])
    assert len(adapted.target_modules) == 14
    assert adapted.head_modules == ()
    assert adapted.dense_shapes() == {}
    ranks = tiered_ranks(adapted.target_modules, TIERS)
    assert {r for name, r in ranks.items() if ".self_attn." in name} == {4}
    assert {r for name, r in ranks.items() if ".mlp." in name} == {8}
    adapted.activate(ranks, LoraSettings(16.0))

    fresh = adapted.extract(0, 1)
    assert fresh.dense == {}
    shapes = adapted.module_shapes()
    for name, f in fresh.modules.items():
        out, inp = shapes[name]
        assert tuple(f.A.shape) == (ranks[name], inp)
        assert tuple(f.B.shape) == (out, ranks[name])
    k_proj = "model.layers.0.self_attn.k_proj"  # grouped-query: 16 x 32
    assert tuple(fresh.modules[k_proj].B.shape) == (16, 4)
    down = "model.layers.1.mlp.down_proj"
    assert tuple(fresh.modules[down].A.shape) == (8, 64)

    factors = random_factors(adapted, seed=3)
    adapted.load(factors, {})
    back = adapted.extract(0, 1)
    for name, f in factors.items():
        assert torch.equal(back.modules[name].A, f.A)
        assert torch.equal(back.modules[name].B, f.B)

    # One module: PEFT's layer computes x (W + s B A)^T + b, with s = alpha / r.
    q_proj = "model.layers.0.self_attn.q_proj"
    layer: Any = adapted.model.get_submodule(q_proj)  # PEFT's LoRA layer (get_base_layer)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    f = factors[q_proj]
    weight = adapted.base_weight(q_proj) + (16.0 / 4) * f.B @ f.A
    bias = layer.get_base_layer().bias
    expected = x @ weight.T + (0 if bias is None else bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)

    # The whole model: every module's base weight plus s * B @ A.
    with torch.no_grad():
        for name, f in factors.items():
            reference.get_submodule(name).weight.add_((16.0 / f.r) * f.B @ f.A)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    torch.testing.assert_close(logits(adapted, ids), logits(reference, ids), rtol=1e-4, atol=1e-4)


def test_tiered_ranks_longest_key_wins_and_unmatched_names_are_errors() -> None:
    names = ["m.layers.0.self_attn.q_proj", "m.layers.0.mlp.up_proj", "m.layers.0.mlp.down_proj"]
    assert tiered_ranks(names, {"self_attn": 4, "mlp": 8, "down_proj": 16}) == {
        names[0]: 4,
        names[1]: 8,
        names[2]: 16,
    }
    assert tiered_ranks(names, {"mlp": 8}, default=2)[names[0]] == 2
    with pytest.raises(ConfigError, match=r"self_attn\.q_proj"):
        tiered_ranks(names, {"mlp": 8})
    with pytest.raises(ConfigError, match="attention"):
        tiered_ranks(names, {"attention": 4, "mlp": 8, "self_attn": 4})


def test_missing_target_lists_the_models_linear_layers() -> None:
    with pytest.raises(ConfigError, match="'c_attn' matches no linear layer") as caught:
        AdaptedModel(tiny_lm("llama"), target_modules=["c_attn"], head_modules=[])
    message = str(caught.value)
    for leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert leaf in message
    assert "\n" not in message


# ---------------------------------------------------------------------- loading


def test_load_causal_lm_from_a_folder_pads_with_eos(tmp_path: Path) -> None:
    # Llama: for model_type qwen2, transformers 5 swaps a saved generic tokenizer for its own
    # Qwen2Tokenizer class, which does not fit this word-level test vocabulary.
    tiny_lm("llama").save_pretrained(tmp_path)
    tokenizer(pad=False).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=f"tokenizer of folder {tmp_path} has only 47 tokens"):
        model, tok = load_causal_lm(str(tmp_path))
    assert tok.pad_token == "<eos>"
    assert model.config.pad_token_id == 2
    assert model.generation_config.pad_token_id == 2
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(
        logits(model, torch.tensor([[1, 4, 5]])),
        logits(tiny_lm("llama"), torch.tensor([[1, 4, 5]])),
    )


def test_load_causal_lm_failures_are_one_line_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="could not be loaded") as caught:
        load_causal_lm(str(tmp_path))  # a folder without config.json
    assert "\n" not in str(caught.value)


def test_a_causal_lm_folder_without_tokenizer_files_is_refused(tmp_path: Path) -> None:
    # For Qwen2, transformers builds a tokenizer of <|endoftext|> alone: every text encodes empty.
    tiny_lm("qwen2").save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_causal_lm(str(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"model {str(tmp_path)!r}: folder {tmp_path} has no tokenizer files")
    assert "\n" not in message


# ---------------------------------------------------------------------- instruction batches


def test_labels_ignore_exactly_the_prompt_and_the_padding() -> None:
    tok = tokenizer()
    prompts = ["w1 w2 w3", "w4", "w5 w6"]
    responses = ["w7 w8", "w9 w10 w11 w12", "w13"]
    data = TokenizedInstructions.from_pairs(
        prompts, responses, tok, 32, template="Q : {prompt} A :"
    )
    assert data.num_truncated == 0
    assert data.lengths.tolist() == [1 + 4 + 3 + 3, 1 + 4 + 1 + 5, 1 + 4 + 2 + 2]
    assert data.prompt_lengths.tolist() == [8, 6, 7]
    first = data.input_ids[0, : int(data.lengths[0])].tolist()
    assert tok.convert_ids_to_tokens(first) == [
        *["<bos>", "Q", ":", "w1", "w2", "w3", "A", ":"],
        *["w7", "w8", "<eos>"],
    ]
    positions = torch.arange(data.input_ids.shape[1])[None, :]
    prompt = positions < data.prompt_lengths[:, None]
    padding = positions >= data.lengths[:, None]
    assert torch.equal(data.labels == IGNORE_INDEX, prompt | padding)
    assert torch.equal(data.labels[~(prompt | padding)], data.input_ids[~(prompt | padding)])
    assert torch.equal(data.attention_mask.bool(), ~padding)
    assert (data.input_ids[padding] == tok.pad_token_id).all()

    full = TokenizedInstructions.from_pairs(prompts, responses, tok, 32, response_only=False)
    pad_full = torch.arange(full.input_ids.shape[1])[None, :] >= full.lengths[:, None]
    assert torch.equal(full.labels == IGNORE_INDEX, pad_full)

    # Dynamic padding: each batch is as wide as its longest row.
    batches = list(data.batches([2, 0, 1], batch_size=2))
    assert [b["input_ids"].shape[1] for b in batches] == [11, 11]
    single = next(data.batches([2], batch_size=1))
    assert single["labels"].shape == (1, 9)
    shuffled = list(data.batches([0, 1, 2], 1, generator=torch.Generator().manual_seed(0)))
    assert len(shuffled) == 3


def test_truncation_cuts_the_prompt_from_the_left_first_and_is_counted() -> None:
    tok = tokenizer()
    long_prompt = " ".join(f"w{i}" for i in range(20))
    long_response = " ".join(f"w{i}" for i in range(20, 40))
    data = TokenizedInstructions.from_pairs(
        [long_prompt, "w1", long_prompt, "w1 w2"],
        ["w30 w31", long_response, long_response, "w3"],
        tok,
        10,
    )
    assert data.num_truncated == 3
    assert data.num_response_truncated == 2
    assert data.lengths.tolist() == [10, 10, 10, 5]
    ids = [
        tok.convert_ids_to_tokens(row[: int(n)].tolist())
        for row, n in zip(data.input_ids, data.lengths, strict=True)
    ]
    # Short response: kept whole with its EOS; the prompt keeps its last 7 tokens.
    assert ids[0] == [*(f"w{i}" for i in range(13, 20)), "w30", "w31", "<eos>"]
    # Short prompt, long response: the prompt is whole, the response loses its tail (and EOS).
    assert ids[1] == ["<bos>", "w1", *(f"w{i}" for i in range(20, 28))]
    # Both long: the response keeps its budget (half of max_length), the prompt the rest.
    assert ids[2] == [*(f"w{i}" for i in range(15, 20)), *(f"w{i}" for i in range(20, 25))]
    assert data.prompt_lengths.tolist() == [7, 2, 5, 3]
    budget = TokenizedInstructions.from_pairs(
        [long_prompt], [long_response], tok, 10, response_budget=8
    )
    assert budget.prompt_lengths.tolist() == [2]


def test_empty_response_and_missing_pad_token() -> None:
    with pytest.raises(ConfigError, match="row 1: the response is empty"):
        TokenizedInstructions.from_pairs(["w1", "w2"], ["w3", "  "], tokenizer(), 16)
    with pytest.raises(ConfigError, match="template must contain"):
        TokenizedInstructions.from_pairs(["w1"], ["w2"], tokenizer(), 16, template="Q:")
    no_pad = tokenizer(pad=False)
    assert no_pad.pad_token is None
    data = TokenizedInstructions.from_pairs(["w1", "w2 w3 w4"], ["w5", "w6"], no_pad, 16)
    assert data.pad_token_id == no_pad.eos_token_id
    # The padded EOS is masked out, the real EOS is learned.
    assert data.labels[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 9, 2, IGNORE_INDEX, IGNORE_INDEX]
    assert data.input_ids[0].tolist()[-2:] == [2, 2]


# ---------------------------------------------------------------------- training and generation


def memorise(kind: str, steps: int) -> tuple[AdaptedModel, Any, TokenizedInstructions]:
    tok = tokenizer()
    adapted = AdaptedModel(tiny_lm(kind, seed=1), head_modules=[])
    adapted.activate(tiered_ranks(adapted.target_modules, TIERS), LoraSettings(16.0))
    data = TokenizedInstructions.from_pairs(
        ["w1 w2 w3", "w4 w5"], ["w10 w11 w12 w13", "w20 w21"], tok, 16, template="Q {prompt} A"
    )
    before = evaluate_lm(adapted, list(data.batches([0, 1], 2)))
    result = train_local(
        adapted,
        lambda: data.batches([0, 1], 2),
        TrainConfig(steps=steps, lr=2e-2, max_grad_norm=1.0),
    )
    after = evaluate_lm(adapted, list(data.batches([0, 1], 2)))
    assert result.steps == steps
    assert after.loss < 0.1 * before.loss
    assert after.perplexity < before.perplexity
    assert before.tokens == after.tokens == 5 + 3
    return adapted, tok, data


@pytest.mark.parametrize("kind", ARCHS)
def test_training_memorises_a_pair_and_generation_reproduces_it(kind: str) -> None:
    adapted, tok, _ = memorise(kind, steps=60)
    prompts = ["w1 w2 w3", "w4 w5"]
    result = evaluate_generation(
        adapted,
        tok,
        prompts,
        ["w10 w11 w12 w13", "w20 w21"],
        max_new_tokens=8,
        template="Q {prompt} A",
    )
    assert result.outputs == ["w10 w11 w12 w13", "w20 w21"]
    assert result.exact_match == 1.0


def test_evaluate_lm_matches_the_models_own_loss() -> None:
    model = tiny_lm("llama")
    data = TokenizedInstructions.from_pairs(["w1 w2", "w3"], ["w4 w5 w6", "w7"], tokenizer(), 16)
    batch = next(data.batches([0, 1], 2))
    with torch.no_grad():
        own = float(model(**batch).loss)
    result = evaluate_lm(model, [batch])
    assert result.tokens == 4 + 2
    assert result.loss == pytest.approx(own, rel=1e-5)


def test_greedy_generation_is_deterministic_batched_and_returns_only_new_tokens() -> None:
    tok = tokenizer()
    adapted = AdaptedModel(tiny_lm("qwen2", seed=2), head_modules=[])
    adapted.activate(4, LoraSettings(8.0))
    adapted.load(random_factors(adapted, seed=7), {})
    prompts = ["w1 w2 w3 w4 w5", "w6", "w7 w8"]
    first = generate_greedy(adapted, tok, prompts, max_new_tokens=5, batch_size=3)
    assert first == generate_greedy(adapted, tok, prompts, max_new_tokens=5, batch_size=3)
    one_by_one = [
        generate_greedy(adapted, tok, [p], max_new_tokens=5, batch_size=1)[0] for p in prompts
    ]
    assert first == one_by_one
    assert all(len(out.split()) <= 5 for out in first)
    # A plain greedy loop without padding or cache: the new tokens only, cut at EOS.
    for prompt, out in zip(prompts, first, strict=True):
        ids = tok(prompt)["input_ids"]
        new: list[int] = []
        for _ in range(5):
            next_id = int(logits(adapted, torch.tensor([ids + new]))[0, -1].argmax())
            if next_id == tok.eos_token_id:
                break
            new.append(next_id)
        assert out == tok.decode(new, skip_special_tokens=True)
    for prompt, out in zip(prompts, first, strict=True):
        assert not out.startswith(prompt)
        assert "<bos>" not in out and "<pad>" not in out
    assert generate_greedy(adapted, tok, [], max_new_tokens=3) == []
    truncated = evaluate_generation(
        adapted, tok, prompts, ["x", "y", "z"], max_new_tokens=2, max_prompt_length=2
    )
    assert truncated.num_truncated_prompts == 2
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_greedy(adapted, tok, prompts, max_new_tokens=0)


# ---------------------------------------------------------------------- chunked evaluation loss


def unchunked_loss(model: Any, batches: list[dict[str, Tensor]]) -> tuple[float, int]:
    """The teacher-forced loss from the full float32 logits: what evaluate_lm used to compute."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            full = model(**inputs).logits.float()
            shifted = batch["labels"][:, 1:]
            total += float(
                torch.nn.functional.cross_entropy(
                    full[:, :-1].reshape(-1, full.shape[-1]),
                    shifted.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            tokens += int((shifted != IGNORE_INDEX).sum())
    return total / tokens, tokens


def padded_batches() -> list[dict[str, Tensor]]:
    """Two batches of unequal rows: prompts masked out, right padding, one 1-token response."""
    data = TokenizedInstructions.from_pairs(
        ["w1 w2 w3 w4 w5", "w6", "w7 w8", "w9 w10 w11"],
        ["w12 w13 w14 w15 w16 w17", "w18", "w19 w20", "w21 w22 w23"],
        tokenizer(),
        32,
        template="Q {prompt} A",
    )
    return list(data.batches([0, 1, 2], 3)) + list(data.batches([3], 1))


@pytest.mark.parametrize("chunk_rows", [1, 3, None])
@pytest.mark.parametrize("kind", ARCHS)
def test_chunked_lm_loss_equals_the_unchunked_loss(kind: str, chunk_rows: int | None) -> None:
    adapted = AdaptedModel(tiny_lm(kind, seed=3), head_modules=[])
    adapted.activate(4, LoraSettings(8.0))
    adapted.load(random_factors(adapted, seed=5), {})  # the adapter changes the logits
    batches = padded_batches()
    assert any((b["attention_mask"] == 0).any() for b in batches)  # there is padding
    expected, tokens = unchunked_loss(adapted.model, batches)
    head_rows: list[int] = []
    network: Any = adapted.model  # a transformers model: get_output_embeddings is not nn.Module's
    head = network.get_output_embeddings()
    hook = head.register_forward_hook(lambda _, args, __: head_rows.append(args[0][..., 0].numel()))
    try:
        result = evaluate_lm(adapted, batches, chunk_rows=chunk_rows)
    finally:
        hook.remove()
    assert result.tokens == tokens == (6 + 1) + (1 + 1) + (2 + 1) + (3 + 1)  # responses + EOS
    assert result.loss == pytest.approx(expected, rel=1e-6)
    # The output layer saw the split check's one row (up to 16 positions, through the model and
    # through the split), then only chunks of labelled positions: never a batch x length block.
    check, chunks = head_rows[:2], head_rows[2:]
    assert max(check) <= 16 < min(int(b["input_ids"].numel()) for b in batches[:1])
    assert max(chunks) <= (chunk_rows or tokens)
    assert sum(chunks) == tokens


def test_a_model_whose_logits_are_soft_capped_is_scored_whole() -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from fedlora.model.training import split_lm_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # The ignore is for .eval() below: transformers' PreTrainedModel.eval is unannotated.
        model = Gemma2ForCausalLM(  # type: ignore[no-untyped-call]
            Gemma2Config(
                vocab_size=len(WORDS),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=64,
                final_logit_softcapping=2.0,  # tanh(logits / 2) * 2 after the output layer
                initializer_range=0.2,
            )
        ).eval()
    batches = padded_batches()
    inputs = {k: v for k, v in batches[0].items() if k != "labels"}
    assert split_lm_head(model, inputs) is None
    assert split_lm_head(tiny_lm("llama"), inputs) is not None
    expected, _ = unchunked_loss(model, batches)
    assert evaluate_lm(model, batches, chunk_rows=2).loss == pytest.approx(expected, rel=1e-6)
