"""Benchmark: the total energy behind FlexLoRA's Figure 8 (``energy = true``), by route.

Each round, ``FlexLoRA(energy=True)`` divides the kept singular values by ``||dW||_F^2`` of the
averaged update, computed from the stacked factors ``P`` (out x R) and ``Q`` (R x in), ``R`` the
sum of the round's client ranks.  Two exact routes (``squared_norm_of_product``): ``gram`` sums
``(P^T P) * (Q Q^T)``, ``R^2 (out + in)`` multiply-adds; ``dense`` forms ``P @ Q``,
``out * in * R``.  ``auto`` takes the cheaper.  Before this benchmark only ``gram`` existed, and a
round of FlexLoRA's heavy-tail-strong population spent minutes in it.

The setting is the ``flexlora_populations_dbpedia`` suite: MiniLM (6 layers; LoRA on query, value
and the attention output, 384 x 384, and the MLP's ``intermediate.dense``, 1536 x 384, and
``output.dense``, 384 x 1536), 50 clients per round with ranks of FlexLoRA's four tiers (8, 30,
"30 on attention / 200 on the MLP", 200) in each population's exact proportions.  One module of
each shape is timed (median of ``--repeats`` calls, random float32 factors, one torch thread) and
multiplied by its count per round.  Each route is timed right after the other, so both see the
same load from other jobs; compare the ratio, not the seconds.

    python benchmarks/energy.py [--repeats 3] [--clients 50]
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from bench_env import set_threads  # first: the offline environment
from bench_tools import Report, table
from bench_tools import parser as bench_parser
from fedlora.aggregation.flexlora import NormRoute, squared_norm_of_product
from fedlora.ranks.distribution import FLEXLORA_TIERS, POPULATIONS, largest_remainder_counts

LAYERS = 6
# One MiniLM module of each shape: its name (it decides a tier's rank), (out, in), count per layer.
SHAPES = {
    "attention 384 x 384": ("bert.encoder.layer.0.attention.self.query", (384, 384), 3),
    "intermediate 1536 x 384": ("bert.encoder.layer.0.intermediate.dense", (1536, 384), 1),
    "output 384 x 1536": ("bert.encoder.layer.0.output.dense", (384, 1536), 1),
}
ROUTES: tuple[NormRoute, ...] = ("gram", "dense", "auto")


def stacked_rank(population: str, clients: int, module: str) -> int:
    """``R`` of ``module`` in a round of ``clients`` drawn from ``population``."""
    counts = largest_remainder_counts(POPULATIONS[population], clients)
    tiers = zip(counts, FLEXLORA_TIERS, strict=True)
    return sum(count * tier.rank_for(module) for count, tier in tiers)


def seconds(P: torch.Tensor, Q: torch.Tensor, route: NormRoute, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        squared_norm_of_product(P, Q, route)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(population: str, clients: int, repeats: int, seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    per_round = dict.fromkeys(ROUTES, 0.0)
    modules = {}
    for name, (module, (out, inn), per_layer) in SHAPES.items():
        rank = stacked_rank(population, clients, module)
        P = torch.randn(out, rank, generator=generator)
        Q = torch.randn(rank, inn, generator=generator)
        timed = {route: seconds(P, Q, route, repeats) for route in ROUTES}
        for route in ROUTES:
            per_round[route] += timed[route] * per_layer * LAYERS
        modules[name] = {"stacked_rank": rank, "seconds": timed}
    return {"modules": modules, "seconds_per_round": per_round}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, threads=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.clients = 1, 5
    set_threads(args.threads)
    report = Report("energy", args)
    results = {}
    for population in ("heavy_tail_light", "uniform", "normal", "heavy_tail_strong"):
        report.log(f"{population}: {args.clients} clients")
        results[population] = measure(population, args.clients, args.repeats, args.seed)
    rows = []
    for population, result in results.items():
        ranks = ", ".join(str(m["stacked_rank"]) for m in result["modules"].values())
        per_round = result["seconds_per_round"]
        rows.append(
            [
                population,
                ranks,
                f"{per_round['gram']:.2f}",
                f"{per_round['dense']:.2f}",
                f"{per_round['auto']:.2f}",
                f"{per_round['gram'] / per_round['auto']:.1f}x",
            ]
        )
    header = ["population", "R: attention, intermediate, output", "gram s", "dense s", "auto s"]
    title = f"||dW||_F^2 of every module in one round of {args.clients} clients (one thread)"
    report.write(results, [table(title, [*header, "gram / auto"], rows)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
