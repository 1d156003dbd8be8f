"""Benchmark: one FlexLoRA aggregation round on one layer, fedlora vs the reference method.

The reference is what the FlexLoRA authors' code does on the server (papers.md §1.2): form the
dense ``out x in`` update ``dW = sum_k p_k (alpha / r_k) B_k A_k``, run a full
``torch.linalg.svd(dW, full_matrices=False)`` and keep the top ``r_max`` triplets with the singular
values in ``B``.  (The reference code keeps one dense ``dW_k`` per client; here the sum is
accumulated in place with ``addmm_``, which makes the reference faster and leaner than the
original, so the speed-ups reported are conservative.)

fedlora is measured through its public API only:
``FlexLoRA(svd=...).aggregate([ClientUpdate, ...], GlobalState.initial({name: (out, in)}))`` with
``svd="auto"`` (and the path it chose, from the public ``choose_method``), and the forced
``"factored"`` (QRs and a full core SVD, the path before issue 14), ``"gram"`` (Gram matrix and a
partial eigensolver of the squared core) and ``"dense"`` paths, side by side in the same run.  A
forced path is skipped when it is the one ``auto`` chose (``auto``'s calls are its calls) or when
it is predicted to take more than ``--forced-budget`` seconds per call.

Layers: LLaMA-7B attention (4096 x 4096) and MLP up/gate (out 11008, in 4096); ``--quick`` uses
1024 x 1024 and 2752 x 1024.  Scenarios: (a) 10 clients with ranks 8..64; (b) 80 clients drawn
from FlexLoRA's heavy-tail-light population (80% rank 8, 5% rank 30, 5% "30 on attention / 200
on MLP", 10% rank 200; papers.md §1.3).  Everything is float32, what clients send.

Timing: every (layer, scenario, method) runs in its own fresh process (multiprocessing "spawn")
that builds the inputs once and then runs the method on request, so no method inherits another's
allocator state.  The parent drives these processes one call at a time, round-robin (reference,
auto, factored, gram, dense, reference, ...), so every method sees the same background load from
other jobs on this shared machine, and the ratios are taken between calls made minutes apart at
most.
The first call is a warm-up and is discarded; when it takes longer than ``--slow-seconds`` the
one-off start-up costs are negligible next to it, so it is kept as the first measured repeat and
only ``--slow-repeats`` calls are made in total (``--repeats`` for the others).  The tables show
the median wall time; the side-by-side one also the ratio of median process CPU times, which other
jobs' load moves less (the JSON has every call's wall and CPU time).  Times are noisy on a shared
machine: compare ratios within one run rather than times across runs.

Threads: one torch thread per process by default (``--threads``).  The machine this was written
on is shared with other jobs; with two OpenMP threads on two busy cores a thread that is descheduled
stalls its partner at every barrier, and a 1024 x 1024 SVD varied from 0.3 s to 25 s between calls.
Single-threaded calls are stable, and the reference and fedlora get the same resources, so the
ratio compares the algorithms.  ``--threads 0`` uses one thread per core.

Memory: peak RSS increase of the call.  Right before each call the process runs ``gc.collect()``,
reads its current RSS (``VmRSS``) and resets the kernel's high-water mark by writing ``5`` to
``/proc/self/clear_refs``; right after, it reads the high-water mark (``VmHWM``, the value
``getrusage`` reports as ``ru_maxrss``).  ``VmHWM - VmRSS_before`` is the most the call added on top
of the interpreter, torch and the already-resident client factors, including the returned global
state.  ``tracemalloc`` cannot see torch's allocations, and a sampling thread can miss short peaks,
hence this.  The first call runs in a fresh process and is the honest figure; later calls may
reuse memory that glibc kept resident after the first one (large tensors are mmapped and returned
on free, but smaller ones can stay in the heap), so they can only read lower.  The maximum over
the calls, i.e. the first call's, is reported; the JSON keeps every call's value.  Where
``clear_refs`` is not writable the peak is not measured.

Accuracy: the singular values of each method's rank-``r_max`` global update ``B A`` are recomputed
in float64 from the factors (``svdvals(B L)`` with ``A A^T = L L^T``, exact whether or not ``A`` has
orthonormal rows), compared with the reference's (max relative error over the top ``r_max``) and
with a float64 ground truth (the exact QR/core-SVD of the stacked factors in float64, computed by
this script, not by fedlora).  The relative Frobenius error of the rank-``r_max`` reconstructions
is computed on the dense ``B A`` products in float64, formed once per method for the check.

Synthetic client factors: ``A_k`` rows uniform in ``±1/sqrt(in)`` (PEFT's init), ``B_k`` Gaussian
with column ``j`` scaled by ``(1 + j)^-1/2`` so each client's update has a decaying spectrum, as
trained adapters do; ``alpha = 16`` (the reference code's constant); ``num_examples`` uniform in
[100, 1000).  Generation is seeded and identical in every process (checked with a checksum).

Usage::

    .venv/bin/python benchmarks/aggregation.py            # full run, ~18 min on 2 busy cores
    .venv/bin/python benchmarks/aggregation.py --quick    # smoke run, ~2 min on 2 busy cores

It prints Markdown tables and writes them with their numbers to
``benchmarks/results/aggregation.json`` (``aggregation_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing as mp
import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench_env import proc_status_mb, reset_peak_rss, set_threads
from bench_tools import Report, table
from bench_tools import parser as bench_parser
from fedlora.aggregation import FlexLoRA, GlobalState, choose_method
from fedlora.lora import ClientUpdate, LoraFactors

ALPHA = 16.0
MODULE = "layer"
SCENARIO_A_RANKS = (8, 8, 16, 16, 16, 32, 32, 32, 64, 64)
SCENARIO_B_CLIENTS = 80
# FlexLoRA's heavy-tail-light population: (type, rank on attention, rank on MLP, probability).
HEAVY_TAIL_LIGHT: tuple[tuple[str, int, int, float], ...] = (
    ("r8", 8, 8, 0.80),
    ("r30", 30, 30, 0.05),
    ("r30/200", 30, 200, 0.05),
    ("r200", 200, 200, 0.10),
)
FULL_LAYERS = {"attn": (4096, 4096), "mlp": (11008, 4096)}
QUICK_LAYERS = {"attn": (1024, 1024), "mlp": (2752, 1024)}
METHODS = ("reference", "auto", "factored", "gram", "dense")
SPEEDUP_TARGET_A = 10.0
SPEEDUP_TARGET_B = 5.0
SIGMA_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Case:
    """One layer in one scenario: its shape, the round's client ranks and data sizes."""

    layer: str
    scenario: str
    out_features: int
    in_features: int
    ranks: tuple[int, ...]
    num_examples: tuple[int, ...]
    client_types: tuple[str, ...]
    index: int

    @property
    def total_rank(self) -> int:
        return sum(self.ranks)

    @property
    def r_max(self) -> int:
        return max(self.ranks)


@dataclass
class Measurement:
    """What one fresh process measured for one method on one case."""

    method: str
    times_s: list[float] = field(default_factory=list)
    cpu_times_s: list[float] = field(default_factory=list)
    peak_rss_increase_mb: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    threads: int = 0
    checksum: float = 0.0
    skipped: str | None = None
    B: np.ndarray | None = None
    A: np.ndarray | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else math.nan

    @property
    def peak_mb(self) -> float:
        return max(self.peak_rss_increase_mb) if self.peak_rss_increase_mb else math.nan


@dataclass(frozen=True)
class Call:
    """One timed call in a worker process."""

    wall_s: float
    cpu_s: float
    peak_mb: float | None


# --------------------------------------------------------------------------------------------
# Scenarios and synthetic client updates


def build_cases(layers: dict[str, tuple[int, int]], seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    n_a = len(SCENARIO_A_RANKS)
    examples_a = tuple(int(x) for x in rng.integers(100, 1000, size=n_a))
    probabilities = [p for *_, p in HEAVY_TAIL_LIGHT]
    drawn = rng.choice(len(HEAVY_TAIL_LIGHT), size=SCENARIO_B_CLIENTS, p=probabilities)
    examples_b = tuple(int(x) for x in rng.integers(100, 1000, size=SCENARIO_B_CLIENTS))
    types_b = tuple(HEAVY_TAIL_LIGHT[int(i)][0] for i in drawn)
    cases: list[Case] = []
    for layer, (out_features, in_features) in layers.items():
        column = 1 if layer == "attn" else 2
        ranks_b = tuple(int(HEAVY_TAIL_LIGHT[int(i)][column]) for i in drawn)
        for scenario, ranks, examples, types in (
            ("a", SCENARIO_A_RANKS, examples_a, tuple(f"r{r}" for r in SCENARIO_A_RANKS)),
            ("b", ranks_b, examples_b, types_b),
        ):
            cases.append(
                Case(layer, scenario, out_features, in_features, ranks, examples, types, len(cases))
            )
    # Scenario-major order: both layers of (a), then both of (b).
    return sorted(cases, key=lambda c: (c.scenario, c.index))


def synthetic_factors(
    out_features: int, in_features: int, rank: int, generator: torch.Generator
) -> LoraFactors:
    """One client's float32 factors: PEFT's ``A`` init, ``B`` with a decaying spectrum."""
    bound = 1.0 / math.sqrt(in_features)
    A = (torch.rand(rank, in_features, generator=generator) * 2.0 - 1.0) * bound
    decay = (1.0 + torch.arange(rank, dtype=torch.float32)) ** -0.5
    B = torch.randn(out_features, rank, generator=generator) * 0.01 * decay
    return LoraFactors(A=A, B=B, alpha=ALPHA, r=rank)


def make_updates(case: Case, seed: int) -> list[ClientUpdate]:
    """The round's float32 client updates, identical in every process for the same seed."""
    updates = []
    for k, (rank, n) in enumerate(zip(case.ranks, case.num_examples, strict=True)):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + case.index * 1_009 + k)
        factors = synthetic_factors(case.out_features, case.in_features, rank, generator)
        updates.append(ClientUpdate(client_id=k, modules={MODULE: factors}, num_examples=n))
    return updates


def checksum(updates: list[ClientUpdate]) -> float:
    total = 0.0
    for u in updates:
        f = u.modules[MODULE]
        total += float(f.A.double().sum()) + float(f.B.double().sum())
    return total


# --------------------------------------------------------------------------------------------
# The methods under test; each returns the global factors (B: out x r_max, A: r_max x in).


def reference_flexlora(updates: list[ClientUpdate]) -> tuple[torch.Tensor, torch.Tensor]:
    """The FlexLoRA reference: dense dW, full SVD, keep the top r_max (sigma in B)."""
    first = updates[0].modules[MODULE]
    total = float(sum(u.num_examples for u in updates))
    dW = torch.zeros(first.B.shape[0], first.A.shape[1], dtype=first.A.dtype)
    for u in updates:
        f = u.modules[MODULE]
        dW.addmm_(f.B, f.A, alpha=(u.num_examples / total) * (f.alpha / f.r))
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    r = max(u.modules[MODULE].r for u in updates)
    return U[:, :r] * S[:r], Vh[:r]


def fedlora_runner(svd: str, case: Case) -> Callable[[list[ClientUpdate]], Any]:
    aggregator = FlexLoRA(svd=svd)  # type: ignore[arg-type]
    previous = GlobalState.initial({MODULE: (case.out_features, case.in_features)})

    def run(updates: list[ClientUpdate]) -> tuple[torch.Tensor, torch.Tensor]:
        state = aggregator.aggregate(updates, previous)
        factors = state.modules[MODULE]
        return factors.B, factors.A

    return run


# --------------------------------------------------------------------------------------------
# Worker processes: one fresh "spawn" process per (case, method), driven round-robin


_WORKER: dict[str, Any] = {}


def worker_setup(case: Case, method: str, seed: int, threads: int) -> tuple[int, float]:
    """Build the inputs in the worker; returns its torch thread count and the input checksum."""
    updates = make_updates(case, seed)
    _WORKER.clear()
    _WORKER["updates"] = updates
    _WORKER["fn"] = reference_flexlora if method == "reference" else fedlora_runner(method, case)
    return set_threads(threads), checksum(updates)


def worker_call() -> Call:
    """Run the method once: wall and CPU seconds, peak RSS increase (MB, None if unmeasurable)."""
    _WORKER.pop("result", None)
    gc.collect()
    before = proc_status_mb()["rss_mb"]
    exact = reset_peak_rss()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    _WORKER["result"] = _WORKER["fn"](_WORKER["updates"])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = proc_status_mb()["hwm_mb"] - before if exact else None
    return Call(wall_s=wall, cpu_s=cpu, peak_mb=peak)


def worker_result() -> tuple[np.ndarray, np.ndarray]:
    B, A = _WORKER.pop("result")
    return B.numpy().copy(), A.numpy().copy()


class MethodWorker:
    """A fresh spawned process that holds one case's inputs and runs one method on request."""

    def __init__(self, case: Case, method: str, seed: int, threads: int) -> None:
        self.method = method
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        self.measurement = Measurement(method=method)
        # Starts the process and builds the inputs in the background; ready() waits for it.
        self._setup = self.pool.submit(worker_setup, case, method, seed, threads)

    def ready(self) -> None:
        self.measurement.threads, self.measurement.checksum = self._setup.result()

    def cancel(self) -> None:
        self._setup.result()
        self.pool.shutdown()

    def call(self) -> Call:
        result = self.pool.submit(worker_call).result()
        if result.peak_mb is not None:
            self.measurement.peak_rss_increase_mb.append(result.peak_mb)
        return result

    def finish(self) -> Measurement:
        self.measurement.B, self.measurement.A = self.pool.submit(worker_result).result()
        self.pool.shutdown()
        return self.measurement


def measure_case(
    case: Case,
    auto_path: str,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> dict[str, Measurement]:
    """Warm up every method, then time them round-robin so they share the machine's load.

    Each method lives in its own process for the whole case.  Round 0 is the warm-up (discarded
    unless the call took longer than ``--slow-seconds``, then it counts as a repeat).  Later rounds
    call, in order, every method that still needs samples, so the slow and the fast methods are
    interleaved in time and see the same background load from other jobs on the machine.
    """
    results: dict[str, Measurement] = {}
    workers: dict[str, MethodWorker] = {}
    targets: dict[str, int] = {}
    # Start all the processes at once (importing torch takes a few seconds each).
    starting = {m: MethodWorker(case, m, args.seed, args.threads) for m in METHODS}
    for method in METHODS:
        skip = forced_skip_reason(method, case, auto_path, results, args.forced_budget)
        if skip is not None:
            starting[method].cancel()
            results[method] = Measurement(method=method, skipped=skip)
            log(f"  {method:9s} skipped: {skip}")
            continue
        worker = starting[method]
        worker.ready()
        workers[method] = worker
        results[method] = worker.measurement
        first = worker.call()
        if first.wall_s > args.slow_seconds:
            worker.measurement.times_s.append(first.wall_s)
            worker.measurement.cpu_times_s.append(first.cpu_s)
            targets[method] = min(args.repeats, args.slow_repeats)
        else:
            worker.measurement.warmup_s = first.wall_s
            targets[method] = args.repeats
        log(f"  {method:9s} first call {first.wall_s:8.3f} s, peak +{first.peak_mb or 0:.0f} MB")
    while True:
        pending = [m for m, w in workers.items() if len(w.measurement.times_s) < targets[m]]
        if not pending:
            break
        for method in pending:
            call = workers[method].call()
            workers[method].measurement.times_s.append(call.wall_s)
            workers[method].measurement.cpu_times_s.append(call.cpu_s)
    for method, worker in workers.items():
        m = worker.finish()
        log(
            f"  {method:9s} median {m.median_s:8.3f} s over {len(m.times_s)}, "
            f"peak +{m.peak_mb:.0f} MB"
        )
    return results


# --------------------------------------------------------------------------------------------
# Accuracy


def float64_truth(updates: list[ClientUpdate], k: int) -> tuple[np.ndarray, torch.Tensor]:
    """Exact top-``k`` singular values and rank-``r_max`` update, QR/core-SVD in float64."""
    weights = torch.tensor([float(u.num_examples) for u in updates], dtype=torch.float64)
    weights = weights / weights.sum()
    P = torch.cat(
        [w * u.modules[MODULE].folded().B.double() for u, w in zip(updates, weights, strict=True)],
        dim=1,
    )
    Q = torch.cat([u.modules[MODULE].A.double() for u in updates])
    Q_P, R_P = torch.linalg.qr(P)
    Q_Q, R_Q = torch.linalg.qr(Q.T)
    U_c, S, Vh_c = torch.linalg.svd(R_P @ R_Q.T, full_matrices=False)
    r_max = max(u.modules[MODULE].r for u in updates)
    dense = (Q_P @ (U_c[:, :r_max] * S[:r_max])) @ (Vh_c[:r_max] @ Q_Q.T)
    return S[:k].numpy(), dense


def singular_values(B: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Singular values of ``B @ A`` in float64, unformed: ``svdvals(B L)``, ``A A^T = L L^T``."""
    B64 = torch.from_numpy(B).double()
    A64 = torch.from_numpy(A).double()
    L = torch.linalg.cholesky(A64 @ A64.T)
    values: torch.Tensor = torch.linalg.svdvals(B64 @ L)  # torch.linalg is untyped (Any)
    return values.numpy()


def max_relative_error(values: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(values - reference) / np.abs(reference)))


def frobenius_relative_error(B: np.ndarray, A: np.ndarray, reference: torch.Tensor) -> float:
    product = torch.from_numpy(B).double() @ torch.from_numpy(A).double()
    return float(torch.linalg.norm(product - reference) / torch.linalg.norm(reference))


# --------------------------------------------------------------------------------------------
# Driver


def run_case(case: Case, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    R, r_max = case.total_rank, case.r_max
    auto_path = choose_method(case.out_features, case.in_features, R, r_max)
    label = f"{case.layer} {case.out_features}x{case.in_features} scenario {case.scenario}"
    log(f"[{label}] K={len(case.ranks)} R={R} r_max={r_max}, auto -> {auto_path}")
    results = measure_case(case, auto_path, args, log)

    log("  accuracy checks (float64)")
    updates = make_updates(case, args.seed)
    expected_checksum = checksum(updates)
    for m in results.values():
        if m.skipped is None and m.checksum != expected_checksum:
            raise RuntimeError(f"{m.method}: inputs differ between processes")
    k_truth = min(r_max + 1, R, case.out_features, case.in_features)
    s_true, dense_true = float64_truth(updates, k_truth)
    del updates
    ref = results["reference"]
    assert ref.B is not None
    assert ref.A is not None
    s_ref = singular_values(ref.B, ref.A)
    dense_ref = torch.from_numpy(ref.B).double() @ torch.from_numpy(ref.A).double()

    methods_out: dict[str, Any] = {}
    for method, m in results.items():
        entry: dict[str, Any] = {
            "skipped": m.skipped,
            "path": {"reference": "dense (reference)", "auto": auto_path}.get(method, method),
        }
        if m.skipped is None:
            assert m.B is not None
            assert m.A is not None
            s = singular_values(m.B, m.A)
            entry |= {
                "times_s": m.times_s,
                "median_s": m.median_s,
                "min_s": min(m.times_s),
                "cpu_times_s": m.cpu_times_s,
                "median_cpu_s": statistics.median(m.cpu_times_s),
                "repeats": len(m.times_s),
                "warmup_s": m.warmup_s,
                "peak_rss_increase_mb": m.peak_mb,
                "peak_rss_increase_mb_per_call": m.peak_rss_increase_mb,
                "torch_threads": m.threads,
                "speedup_vs_reference": ref.median_s / m.median_s,
                "cpu_speedup_vs_reference": (
                    statistics.median(ref.cpu_times_s) / statistics.median(m.cpu_times_s)
                ),
                "sigma_max_rel_err_vs_reference": max_relative_error(s, s_ref),
                "frobenius_rel_err_vs_reference": frobenius_relative_error(m.B, m.A, dense_ref),
                "sigma_max_rel_err_vs_float64": max_relative_error(s, s_true[:r_max]),
                "frobenius_rel_err_vs_float64": frobenius_relative_error(m.B, m.A, dense_true),
            }
        methods_out[method] = entry
    return {
        "layer": case.layer,
        "scenario": case.scenario,
        "shape": [case.out_features, case.in_features],
        "clients": len(case.ranks),
        "total_rank": R,
        "r_max": r_max,
        "rank_counts": {str(r): n for r, n in sorted(Counter(case.ranks).items())},
        "client_type_counts": dict(sorted(Counter(case.client_types).items())),
        "auto_path": auto_path,
        "sigma_r_max_over_next": (
            float(s_true[r_max - 1] / s_true[r_max]) if len(s_true) > r_max else None
        ),
        "methods": methods_out,
    }


def forced_skip_reason(
    method: str, case: Case, auto_path: str, done: dict[str, Measurement], budget: float
) -> str | None:
    """Skip the forced path ``auto`` takes, or one predicted to take over ``budget`` s per call."""
    if method == auto_path:
        return "the path auto chose: see auto"
    if method == "dense":
        # Same dense product and full SVD as the reference, so it takes about as long.
        predicted = done["reference"].median_s
    elif method == "factored" and auto_path != "factored":
        from fedlora.aggregation.svd import dense_cost, factored_cost

        shape = (case.out_features, case.in_features, case.total_rank)
        predicted = done["reference"].median_s * factored_cost(*shape) / dense_cost(*shape)
    else:
        return None
    if predicted > budget:
        return f"predicted {predicted:.0f} s per call > --forced-budget {budget:.0f} s"
    return None


def targets(cases: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """The issues' targets for ``svd="auto"``; they are stated for the LLaMA-7B shapes.

    Scenario (a): issue 14's first part; scenario (b): its second part (both shapes).
    """
    verdicts: dict[str, Any] = {}
    for c in cases:
        auto = c["methods"]["auto"]
        speedup = auto["speedup_vs_reference"]
        err = auto["sigma_max_rel_err_vs_reference"]
        target = SPEEDUP_TARGET_A if c["scenario"] == "a" else SPEEDUP_TARGET_B
        goal = f">= {target:g}x faster, sigma rel err <= {SIGMA_TOLERANCE:g}"
        met = speedup >= target and err <= SIGMA_TOLERANCE
        verdicts[f"{c['layer']}/{c['scenario']}"] = {
            "target": goal,
            "met": bool(met),
            "shapes": "quick shapes, indicative only" if quick else "LLaMA-7B shapes",
        }
    return verdicts


def measured(case: dict[str, Any], path: str) -> dict[str, Any]:
    """A path's entry; the forced path ``auto`` took was not run again, ``auto``'s calls are its."""
    entry: dict[str, Any] = case["methods"][path]
    return case["methods"]["auto"] if entry["skipped"] and case["auto_path"] == path else entry


def tables(cases: list[dict[str, Any]], verdicts: dict[str, Any]) -> list[str]:
    """The reference against ``svd="auto"``, the exact paths side by side, every method."""
    summary, paths = [], []
    for c in cases:
        ref, auto = c["methods"]["reference"], c["methods"]["auto"]
        ranks = [int(r) for r in c["rank_counts"]]
        who = "heavy-tail-light over" if c["scenario"] == "b" else "ranks"
        layer = " x ".join(map(str, c["shape"]))
        clients = f"{c['clients']} ({who} {min(ranks)}–{max(ranks)})"
        summary.append(
            (
                layer,
                clients,
                c["total_rank"],
                f"{ref['median_s']:.3g}",
                f"{auto['median_s']:.3g} ({c['auto_path']})",
                f"**{auto['speedup_vs_reference']:.1f}x**",
                f"{auto['sigma_max_rel_err_vs_reference']:.1e}",
                f"{ref['peak_rss_increase_mb']:.0f} / {auto['peak_rss_increase_mb']:.0f}",
                "met" if verdicts[f"{c['layer']}/{c['scenario']}"]["met"] else "MISSED",
            )
        )
        timed = [measured(c, path) for path in ("factored", "gram")]
        paths.append(
            (
                layer,
                c["scenario"],
                c["total_rank"],
                f"{ref['median_s']:.3g}",
                *(
                    "skipped"
                    if e["skipped"]
                    else f"{e['median_s']:.3g} (**{e['speedup_vs_reference']:.1f}x**, "
                    f"CPU {e['cpu_speedup_vs_reference']:.1f}x)"
                    for e in timed
                ),
                " / ".join(
                    "–" if e["skipped"] else f"{e['sigma_max_rel_err_vs_float64']:.1e}"
                    for e in (ref, *timed)
                ),
            )
        )
    detail = []
    for c in cases:
        for method, e in c["methods"].items():
            case = f"{'x'.join(map(str, c['shape']))} ({c['scenario']})"
            if e["skipped"]:
                detail.append((case, method, e["path"], "skipped", "", "", "", ""))
                continue
            detail.append(
                (
                    case,
                    method,
                    e["path"],
                    f"{e['median_s']:.3f}",
                    e["repeats"],
                    f"{e['peak_rss_increase_mb']:.0f}",
                    f"{e['speedup_vs_reference']:.1f}x",
                    f"{e['sigma_max_rel_err_vs_float64']:.1e}",
                )
            )
    return [
        table(
            'FlexLoRA aggregation, one round, one layer, float32: the reference against svd="auto"',
            (
                "layer",
                "clients",
                "stacked R",
                "reference s",
                "fedlora s (path)",
                "speed-up",
                "σ rel. error vs reference",
                "peak +MB ref / fedlora",
                "target",
            ),
            summary,
        ),
        table(
            "The exact paths side by side: median s (speed-up over the reference in wall and "
            "in CPU time)",
            (
                "layer",
                "scenario",
                "stacked R",
                "reference s",
                "factored",
                "gram",
                "σ rel. error vs float64: reference / factored / gram",
            ),
            paths,
        ),
        table(
            "Every method (median of n calls; skipped: auto's path, or over --forced-budget)",
            ("case", "method", "path", "median s", "n", "peak +MB", "ref/this", "σ err vs f64"),
            detail,
        ),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, threads=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls after warm-up (5; 3 with --quick)",
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=10.0,
        help="a first call slower than this counts as a repeat instead of a warm-up",
    )
    parser.add_argument(
        "--slow-repeats", type=int, default=2, help="timed calls in total for slow methods"
    )
    parser.add_argument(
        "--forced-budget",
        type=float,
        default=60.0,
        help="skip a forced fedlora path predicted to take longer than this per call",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1 or args.slow_repeats < 1:
        parser.error("--repeats and --slow-repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report("aggregation", args)
    set_threads(args.threads)  # the float64 ground truth computed in this process
    layers = QUICK_LAYERS if args.quick else FULL_LAYERS
    cases = [run_case(case, args, report.log) for case in build_cases(layers, args.seed)]
    verdicts = targets(cases, args.quick)
    results = {
        "config": {
            "seed": args.seed,
            "repeats": args.repeats,
            "slow_seconds": args.slow_seconds,
            "slow_repeats": args.slow_repeats,
            "forced_budget_s": args.forced_budget,
            "threads_per_worker": args.threads or "one per core",
            "dtype": "float32",
            "alpha": ALPHA,
            "scenario_b_population": [
                {"type": t, "attn_rank": a, "mlp_rank": m, "p": p}
                for t, a, m, p in HEAVY_TAIL_LIGHT
            ],
        },
        "cases": cases,
        "targets": verdicts,
    }
    report.write(results, tables(cases, verdicts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
