"""Random client updates for aggregation tests (seeded, float64 so oracles compare tightly)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from hypothesis import strategies as st

from fedlora.aggregation import GlobalState
from fedlora.lora import ClientUpdate, FoldedFactors, LoraFactors

DTYPE = torch.float64


def random_factors(
    out_features: int,
    in_features: int,
    r: int,
    *,
    alpha: float,
    generator: torch.Generator,
    use_rslora: bool = False,
) -> LoraFactors:
    A = torch.randn(r, in_features, generator=generator, dtype=DTYPE)
    B = torch.randn(out_features, r, generator=generator, dtype=DTYPE)
    return LoraFactors(A=A, B=B, alpha=alpha, r=r, use_rslora=use_rslora)


def make_update(
    client_id: int,
    shapes: Mapping[str, tuple[int, int]],
    ranks: Mapping[str, int] | int,
    *,
    seed: int,
    alpha: float = 16.0,
    num_examples: int = 10,
    dense_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> ClientUpdate:
    generator = torch.Generator().manual_seed(seed)
    modules = {
        name: random_factors(
            out,
            inp,
            ranks if isinstance(ranks, int) else ranks[name],
            alpha=alpha,
            generator=generator,
        )
        for name, (out, inp) in shapes.items()
    }
    dense = {
        name: torch.randn(*shape, generator=generator, dtype=DTYPE)
        for name, shape in (dense_shapes or {}).items()
    }
    return ClientUpdate(
        client_id=client_id, modules=modules, num_examples=num_examples, dense=dense
    )


def initial(shapes: Mapping[str, tuple[int, int]], **kwargs: object) -> GlobalState:
    return GlobalState.initial(shapes, dtype=DTYPE, **kwargs)  # type: ignore[arg-type]


def weights_of(updates: Sequence[ClientUpdate]) -> list[float]:
    total = sum(u.num_examples for u in updates)
    return [u.num_examples / total for u in updates]


def average_delta(updates: Sequence[ClientUpdate], module: str) -> torch.Tensor:
    """The oracle ``sum_k p_k s_k B_k A_k`` with data-size weights."""
    weights = weights_of(updates)
    return sum(
        (w * u.modules[module].delta() for w, u in zip(weights, updates, strict=True)),
        start=torch.zeros(()),
    )


def masked_mean(
    updates: Sequence[ClientUpdate], module: str, weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """RBLA-style oracle of slot-wise averaging: NaN-pad every client's folded factors to the
    largest rank, then a ``weights``-weighted mean over the values present."""
    rank = max(u.modules[module].r for u in updates)
    w = torch.tensor(weights, dtype=DTYPE)
    stacked_A, stacked_B = [], []
    for u in updates:
        f = u.modules[module].folded()
        A = torch.full((rank, f.in_features), math.nan, dtype=DTYPE)
        B = torch.full((f.out_features, rank), math.nan, dtype=DTYPE)
        A[: f.rank], B[:, : f.rank] = f.A, f.B
        stacked_A.append(A)
        stacked_B.append(B.T)
    results = []
    for stack in (torch.stack(stacked_A), torch.stack(stacked_B)):
        present = ~torch.isnan(stack)
        total = (w[:, None, None] * present).sum(0)
        results.append(torch.nansum(stack * w[:, None, None], 0) / total)
    return results[0], results[1].T


def product(factors: LoraFactors | FoldedFactors) -> torch.Tensor:
    return factors.delta()


@st.composite
def rounds(
    draw: st.DrawFn,
    *,
    min_clients: int = 1,
    max_clients: int = 5,
    max_dim: int = 12,
    equal_ranks: bool = False,
) -> tuple[dict[str, tuple[int, int]], list[ClientUpdate]]:
    """A round of updates on one or two modules with random shapes, ranks, alphas and sizes."""
    num_modules = draw(st.integers(1, 2))
    shapes = {
        f"layer{i}.proj": (draw(st.integers(2, max_dim)), draw(st.integers(2, max_dim)))
        for i in range(num_modules)
    }
    num_clients = draw(st.integers(min_clients, max_clients))
    shared_ranks = {n: draw(st.integers(1, min(s))) for n, s in shapes.items()}
    updates = []
    for k in range(num_clients):
        ranks = (
            shared_ranks
            if equal_ranks
            else {n: draw(st.integers(1, min(s))) for n, s in shapes.items()}
        )
        updates.append(
            make_update(
                k,
                shapes,
                ranks,
                seed=draw(st.integers(0, 2**31)),
                alpha=draw(st.sampled_from([1.0, 8.0, 16.0, 32.0])),
                num_examples=draw(st.integers(1, 100)),
            )
        )
    return shapes, updates


ROUND_SHAPES = {"enc.q": (12, 10), "enc.v": (12, 10)}
ROUND_DENSE = {"head.weight": (3, 10)}


def method_round(method: str) -> tuple[list[ClientUpdate], GlobalState]:
    """Three clients' updates that ``method`` accepts (equal ranks for FedIT, the served ``A``
    for FFA), with a dense head, and the initial state they were served from."""
    ranks = [4, 4, 4] if method == "fedit" else [2, 4, 6]
    updates = [
        make_update(k, ROUND_SHAPES, r, seed=k, num_examples=10 + k, dense_shapes=ROUND_DENSE)
        for k, r in enumerate(ranks)
    ]
    state = GlobalState.initial(ROUND_SHAPES, dense={"head.weight": torch.zeros(3, 10)}, seed=0)
    if method == "ffa":  # FFA's clients send back the A they were served
        updates = [
            replace(
                u,
                modules={
                    n: replace(f, A=state.slots(n, f.r).A.double()) for n, f in u.modules.items()
                },
            )
            for u in updates
        ]
    return updates, state
