"""Benchmark: the memory and time of a causal-LM training step, the model's own loss against chunks.

:func:`fedlora.model.train_local` used to minimise the loss the model returns for its
``labels``, which builds the whole ``batch x length x vocabulary`` logits, their float32
log-softmax and their gradient; it now scores the labelled positions from the decoder's hidden
states, the output layer applied to a checkpointed chunk of rows at a time.  Each case runs in a
fresh process (``--child``): SmolLM2-135M-Instruct (49,152-token vocabulary) in float32 with a
rank-8 adapter on its seven projections, one optimizer step (AdamW) on one batch of ``rows x
tokens`` random tokens, every position labelled (the most the chunks have to score; an
instruction batch's masked prompts would only shorten them).  A warm-up step on a small batch
comes first (it also runs the chunked path's one-off check of its split).  A setting ending in
``/ckpt`` turns on activation checkpointing (``train.gradient_checkpointing``, what a large model
needs to fit): the decoder's activations then shrink to one hidden state per layer and position,
and the logits are most of what is left.  Reported: the peak
RSS above the RSS before the step (``VmHWM`` reset first; the CPU allocator returns large blocks
to the system), the seconds, the loss and the norm of the LoRA
gradient (both must agree between the cases).

The peak RSS is measured twice, each in its own process.  With glibc's default ``malloc``, blocks
below its (dynamic, up to 32 MiB) mmap threshold come from the heap, which keeps freed memory
(fragmented) mapped: that is what the process costs, but it includes memory no tensor holds any
more.  With ``MALLOC_MMAP_THRESHOLD_=65536`` every block of 64 KiB or more is mapped on its own
and returned when freed, so the peak RSS is close to the peak of the live tensors (what a CUDA
allocator would report), at the price of slower allocations: its seconds are not reported.

``model's own loss`` is ``train_local(..., chunked_loss=False)``, kept as the reference.

Writes ``benchmarks/results/train_memory.json``.

    python benchmarks/train_memory.py [--settings 8x256,8x256/ckpt,8x512/ckpt]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from bench_env import proc_status_mb, quiet_transformers, reset_peak_rss, set_threads
from bench_tools import Report, parser, run_child, table, write_child

CASES = ("model's own loss", "chunked")
MMAP_ALL = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def child(args: argparse.Namespace) -> int:
    import torch

    from fedlora.lora import LoraSettings
    from fedlora.model import AdaptedModel, TrainConfig, load_causal_lm, train_local
    from fedlora.model.device import enable_checkpointing

    quiet_transformers()
    set_threads(args.threads)
    model, _ = load_causal_lm("smollm2")
    if args.checkpointing:
        enable_checkpointing(model)
    adapted = AdaptedModel(model, head_modules=[])
    adapted.activate(8, LoraSettings(16.0))
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.tokens), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    small = {key: value[:1, :16] for key, value in batch.items()}
    chunked = args.case == "chunked"
    config = TrainConfig(steps=1, lr=1e-4)
    squares: dict[int, float] = {}

    def record(parameter: torch.Tensor) -> None:
        assert parameter.grad is not None
        squares[id(parameter)] = float(parameter.grad.pow(2).sum())

    train_local(adapted, [small], config, chunked_loss=chunked)  # warm-up
    hooks = [
        # torch leaves register_post_accumulate_grad_hook unannotated
        p.register_post_accumulate_grad_hook(record)  # type: ignore[no-untyped-call]
        for p in adapted.trainable_parameters()
    ]
    reset_peak_rss()
    before = proc_status_mb()["rss_mb"]
    start = time.perf_counter()
    result = train_local(adapted, [batch], config, chunked_loss=chunked)
    seconds = time.perf_counter() - start
    peak = proc_status_mb()["hwm_mb"]
    for hook in hooks:
        hook.remove()
    return write_child(
        args.child,
        {
            "loss": result.mean_loss,
            "grad_norm": math.sqrt(sum(squares.values())),
            "peak_above_start_mb": round(peak - before, 1),
            "rss_before_mb": round(before, 1),
            "seconds": seconds,
        },
    )


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__, threads=1)
    arguments.add_argument(
        "--settings",
        default="8x256,8x256/ckpt,8x512/ckpt",
        help="rows x tokens per batch, /ckpt: activation checkpointing\n"
        "(default 8x256,8x256/ckpt,8x512/ckpt)",
    )
    arguments.add_argument("--child", default=None, help=argparse.SUPPRESS)
    arguments.add_argument("--case", choices=CASES, default="chunked", help=argparse.SUPPRESS)
    arguments.add_argument("--rows", type=int, default=8, help=argparse.SUPPRESS)
    arguments.add_argument("--tokens", type=int, default=256, help=argparse.SUPPRESS)
    arguments.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = arguments.parse_args(argv)
    if args.quick:
        args.settings = "2x32,2x32/ckpt"
    if args.child is not None:
        return child(args)
    settings = []
    for setting in args.settings.split(","):
        shape, _, flag = setting.partition("/")
        rows, tokens = (int(n) for n in shape.split("x"))
        settings.append((rows, tokens, flag == "ckpt"))
    report = Report("train_memory", args)
    results: dict[str, Any] = {"cases": []}
    for rows, tokens, checkpointing in settings:
        for case in CASES:
            command = [
                *("--case", case, "--seed", str(args.seed)),
                *("--rows", str(rows), "--tokens", str(tokens)),
                *("--threads", str(args.threads)),
                *(["--checkpointing"] if checkpointing else []),
            ]
            numbers = run_child(__file__, command, report.log)
            mapped = run_child(__file__, command, report.log, env=MMAP_ALL)
            numbers["mmap_64k"] = mapped
            if abs(mapped["loss"] - numbers["loss"]) > 1e-6 * abs(numbers["loss"]):
                raise RuntimeError(f"the two allocators gave different losses: {mapped} {numbers}")
            results["cases"].append(
                {
                    "case": case,
                    "rows": rows,
                    "tokens": tokens,
                    "activation_checkpointing": checkpointing,
                    **numbers,
                }
            )
            report.log(f"{rows}x{tokens} checkpointing={checkpointing} {case}: {numbers}")
    lines = [
        (
            f"{c['rows']} x {c['tokens']}",
            "yes" if c["activation_checkpointing"] else "no",
            c["case"],
            f"{c['peak_above_start_mb']:,.0f}",
            f"{c['mmap_64k']['peak_above_start_mb']:,.0f}",
            f"{c['seconds']:.1f}",
            f"{c['loss']:.6f}",
            f"{c['grad_norm']:.6g}",
        )
        for c in results["cases"]
    ]
    title = (
        "SmolLM2-135M (float32, 49,152-token vocabulary): one LoRA training step (rank 8, "
        "AdamW), every token labelled"
    )
    header = (
        "batch",
        "activation checkpointing",
        "loss computed from",
        "peak RSS above start, default malloc (MB)",
        "peak RSS, blocks >= 64 KiB mmapped (MB)",
        "seconds",
        "loss",
        "grad norm",
    )
    report.write(results, [table(title, header, lines)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
