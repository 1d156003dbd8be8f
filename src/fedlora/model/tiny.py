"""A tiny random BERT classifier with the real MiniLM tokenizer, for smoke runs without a hub.

Tests, benchmarks and quick trials use it where the model's quality does not matter: it loads in
milliseconds and trains a round in a second, with real tokenisation of real text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedlora.model.loading import resolve_model_path


def save_tiny_bert(path: Path, *, num_labels: int = 4, seed: int = 0) -> Path:
    """Write a 2-layer, 32-wide random BERT and the MiniLM tokenizer to ``path``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def save_tiny_causal_lm(path: Path, *, kind: str = "llama", seed: int = 0) -> Path:
    """Write a 2-layer, 64-wide random Llama, Qwen2 or GPT-2 and a small byte-level BPE tokenizer.

    The tokenizer (512 tokens, trained on the built-in instruction tasks and the prompt
    templates, BOS prepended, a pad token and a chat template) tokenises any text, so the model
    runs the whole causal-LM path of the engine in seconds.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from fedlora.instruct import PROMPT_TEMPLATES, available_task_count, generate_tasks

    tasks = generate_tasks(
        num_tasks=available_task_count(data_dir=path / "no-topic-data"),
        examples_per_task=3,
        seed=0,
        data_dir=path / "no-topic-data",
    )
    corpus = [text for pair in PROMPT_TEMPLATES.values() for text in pair]
    corpus += [f"{ex.instruction}\n{ex.input}\n{ex.output}" for ex in tasks.examples]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    make_tokenizer: Any = PreTrainedTokenizerFast  # untyped constructor
    tokenizer = make_tokenizer(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokens = {
        "vocab_size": backend.get_vocab_size(),
        "bos_token_id": backend.token_to_id("<s>"),
        "eos_token_id": backend.token_to_id("</s>"),
        "pad_token_id": backend.token_to_id("<pad>"),
        "initializer_range": 0.2,  # logits large enough to be moved by LoRA alone
    }
    decoder = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    }
    gpt2 = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512}
    builders: dict[str, tuple[Any, Any, dict[str, Any]]] = {
        "llama": (LlamaConfig, LlamaForCausalLM, decoder),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, decoder),
        "gpt2": (GPT2Config, GPT2LMHeadModel, gpt2),
    }
    if kind not in builders:
        raise ValueError(f"kind must be one of {sorted(builders)}, got {kind!r}")
    config_class, model_class, shape = builders[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config_class(**tokens, **shape))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
