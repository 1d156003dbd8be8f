"""Benchmark: the memory of the causal-LM test loss, full logits against chunks.

The teacher-forced test loss of a causal LM used to build the whole ``batch x length x
vocabulary`` logits in float32, then a reshaped copy and the log-softmax of the same size;
:func:`fedlora.model.evaluate_lm` now scores only the labelled positions, a chunk of rows at a
time.  Each case runs in a fresh process (``--child``): SmolLM2-135M-Instruct (49,152-token
vocabulary) with a rank-8 adapter, one batch of ``--batch`` rows of ``--length`` random tokens
whose second half is labelled (as a response is), at float32 and bfloat16.  Reported: the peak
RSS above the RSS before the evaluation (``VmHWM`` reset first), the loss of both (they must
agree), and the seconds.

``full logits`` is the previous computation, kept here as the reference.

Writes ``benchmarks/results/eval_memory.json``.

    python benchmarks/eval_memory.py [--batch 16 --length 256]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench_env import proc_status_mb, quiet_transformers, reset_peak_rss, set_threads
from bench_tools import Report, parser, run_child, table, write_child

CASES = ("full logits", "chunked")
DTYPES = ("float32", "bfloat16")


def full_logits_loss(model: Any, batch: dict[str, Any]) -> float:
    """The previous evaluate_lm on one batch: all the logits in float32, then the loss."""
    import torch

    with torch.inference_mode():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()
        shifted = batch["labels"][:, 1:]
        total = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            shifted.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        return float(total) / int((shifted != -100).sum())


def child(args: argparse.Namespace) -> int:
    import torch

    from fedlora.lora import LoraSettings
    from fedlora.model import AdaptedModel, evaluate_lm, load_causal_lm

    quiet_transformers()
    set_threads(args.threads)
    model, _ = load_causal_lm("smollm2", dtype=getattr(torch, args.dtype))
    adapted = AdaptedModel(model, head_modules=[])
    adapted.activate(8, LoraSettings(16.0))
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length), generator=generator)
    labels = ids.clone()
    labels[:, : args.length // 2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    small = {k: v[:1, :16] for k, v in batch.items()}
    small["labels"] = small["input_ids"].clone()

    def loss(rows: dict[str, Any]) -> float:
        if args.case == "chunked":
            return evaluate_lm(adapted, [rows]).loss
        return full_logits_loss(adapted, rows)

    loss(small)  # warm-up (and the chunked path's one-off check of its split)
    reset_peak_rss()
    before = proc_status_mb()["rss_mb"]
    start = time.perf_counter()
    value = loss(batch)
    seconds = time.perf_counter() - start
    peak = proc_status_mb()["hwm_mb"]
    return write_child(
        args.child,
        {"loss": value, "peak_above_start_mb": round(peak - before, 1), "seconds": seconds},
    )


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__, threads=1)
    arguments.add_argument("--batch", type=int, default=16, help="rows (default 16)")
    arguments.add_argument("--length", type=int, default=256, help="tokens per row (default 256)")
    arguments.add_argument("--child", default=None, help=argparse.SUPPRESS)
    arguments.add_argument("--case", choices=CASES, default="chunked", help=argparse.SUPPRESS)
    arguments.add_argument("--dtype", choices=DTYPES, default="float32", help=argparse.SUPPRESS)
    args = arguments.parse_args(argv)
    if args.quick:
        args.batch, args.length = 2, 32
    if args.child is not None:
        return child(args)
    report = Report("eval_memory", args)
    results: dict[str, Any] = {"batch": args.batch, "length": args.length, "cases": []}
    for dtype in DTYPES:
        for case in CASES:
            numbers = run_child(
                __file__,
                [
                    *("--case", case, "--dtype", dtype, "--seed", str(args.seed)),
                    *("--batch", str(args.batch), "--length", str(args.length)),
                    *("--threads", str(args.threads)),
                ],
                report.log,
            )
            results["cases"].append({"case": case, "dtype": dtype, **numbers})
            report.log(f"{dtype} {case}: {numbers}")
    rows = [
        (
            c["dtype"],
            c["case"],
            f"{c['peak_above_start_mb']:,.0f}",
            f"{c['loss']:.6f}",
            f"{c['seconds']:.1f}",
        )
        for c in results["cases"]
    ]
    title = (
        f"SmolLM2-135M test loss of one batch of {args.batch} x {args.length} tokens "
        f"(second half labelled)"
    )
    header = ("dtype", "loss computed from", "peak RSS above start (MB)", "loss", "seconds")
    report.write(results, [table(title, header, rows)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
