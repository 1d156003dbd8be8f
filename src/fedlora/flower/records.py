"""LoRA factors and client updates as Flower records (tensors, never pickles)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import Tensor

from fedlora.aggregation import GlobalState
from fedlora.errors import FedloraError, InvalidUpdateError
from fedlora.flower.fields import ARRAYS, METRICS
from fedlora.lora import ClientUpdate, FoldedFactors, LoraFactors, LoraSettings, MergedRound

_MERGED_KEY = re.compile(r"round-(\d+)/(.+)/([AB])")


def _pack(pairs: Mapping[str, tuple[Tensor, Tensor]], dense: Mapping[str, Tensor]) -> ArrayRecord:
    tensors: dict[str, Tensor] = {}
    for name, (A, B) in pairs.items():
        tensors[f"lora/{name}/A"] = A.detach().float().contiguous()
        tensors[f"lora/{name}/B"] = B.detach().float().contiguous()
    for name, tensor in dense.items():
        tensors[f"dense/{name}"] = tensor.detach().float().contiguous()
    return ArrayRecord(torch_state_dict=tensors)


def factors_to_record(
    factors: Mapping[str, LoraFactors], dense: Mapping[str, Tensor]
) -> ArrayRecord:
    """``lora/<module>/A``, ``lora/<module>/B`` (PEFT shapes, unfolded) and ``dense/<name>``."""
    return _pack({name: (f.A, f.B) for name, f in factors.items()}, dense)


def record_to_factors(
    record: ArrayRecord, lora: LoraSettings, client_id: int
) -> tuple[dict[str, LoraFactors], dict[str, Tensor]]:
    """Inverse of :func:`factors_to_record` for factors of ``lora``'s scale.

    The rank of each module is read from its arrays.
    """
    pairs: dict[str, dict[str, Tensor]] = {}
    dense: dict[str, Tensor] = {}
    for key, tensor in record.to_torch_state_dict().items():
        kind, _, rest = key.partition("/")
        if kind == "lora":
            name, _, which = rest.rpartition("/")
            if which not in ("A", "B"):
                raise InvalidUpdateError(f"unexpected array {key!r}", client_id=client_id)
            pairs.setdefault(name, {})[which] = tensor
        elif kind == "dense":
            dense[rest] = tensor
        else:
            raise InvalidUpdateError(f"unexpected array {key!r}", client_id=client_id)
    factors: dict[str, LoraFactors] = {}
    for name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise InvalidUpdateError("needs both A and B", client_id=client_id, module=name)
        A, B = pair["A"], pair["B"]
        rank = int(A.shape[0]) if A.ndim == 2 else 0
        factors[name] = LoraFactors(A=A, B=B, alpha=lora.alpha, r=rank, use_rslora=lora.use_rslora)
    return factors, dense


def state_to_record(state: GlobalState) -> ArrayRecord:
    """The global state's folded factors and dense tensors (what ``Result.arrays`` holds)."""
    return _pack({name: (f.A, f.B) for name, f in state.modules.items()}, state.dense)


def merged_to_record(merged: Sequence[MergedRound]) -> ArrayRecord:
    """FLoRA's merged rounds as their stacked factors: ``round-<n>/<module>/A`` and ``.../B``."""
    tensors: dict[str, Tensor] = {}
    for entry in merged:
        for name, factors in entry.modules.items():
            tensors[f"round-{entry.round}/{name}/A"] = factors.A.detach().contiguous()
            tensors[f"round-{entry.round}/{name}/B"] = factors.B.detach().contiguous()
    return ArrayRecord(torch_state_dict=tensors)


def record_to_merged(record: ArrayRecord) -> list[MergedRound]:
    """Inverse of :func:`merged_to_record`, in round order."""
    rounds: dict[int, dict[str, dict[str, Tensor]]] = {}
    for key, tensor in record.to_torch_state_dict().items():
        match = _MERGED_KEY.fullmatch(key)
        if match is None:
            raise FedloraError(f"merged rounds: unexpected array {key!r}")
        round_text, name, which = match.groups()
        rounds.setdefault(int(round_text), {}).setdefault(name, {})[which] = tensor
    merged = []
    for round_index in sorted(rounds):
        modules = {}
        for name, pair in rounds[round_index].items():
            if set(pair) != {"A", "B"}:
                raise FedloraError(f"merged round {round_index}: module {name!r} lacks A or B")
            modules[name] = FoldedFactors(A=pair["A"], B=pair["B"])
        merged.append(MergedRound(round=round_index, modules=modules))
    return merged


def reply_content(update: ClientUpdate, metrics: Mapping[str, float | int]) -> RecordDict:
    """What a ClientApp sends back after training."""
    alpha = next(iter(update.modules.values())).alpha if update.modules else 0.0
    return RecordDict(
        {
            ARRAYS: factors_to_record(update.modules, update.dense),
            METRICS: MetricRecord(
                {
                    "num-examples": update.num_examples,
                    "client": update.client_id,
                    "alpha": float(alpha),
                    **metrics,
                }
            ),
        }
    )


def update_from_reply(content: RecordDict, lora: LoraSettings) -> ClientUpdate:
    """Rebuild a :class:`ClientUpdate` trained with ``lora`` and the alpha the reply states.

    Malformed content raises :class:`FedloraError`; content that names no client yet raises a
    plain one, which the transport reports for the client whose node sent the reply.
    """
    metrics = content.metric_records.get(METRICS)
    arrays = content.array_records.get(ARRAYS)
    if metrics is None or arrays is None:
        raise FedloraError("reply lacks arrays or metrics")
    client_id = metric_integer(metrics, "client")
    sent = replace(lora, alpha=_scalar(metrics, "alpha"))
    factors, dense = record_to_factors(arrays, sent, client_id)
    return ClientUpdate(
        client_id=client_id,
        modules=factors,
        num_examples=metric_integer(metrics, "num-examples"),
        dense=dense,
    )


def metric_integer(metrics: MetricRecord, key: str) -> int:
    """A whole number a reply states (an int, or a float with no fraction); else an error."""
    value = _scalar(metrics, key)
    if not value.is_integer():
        raise FedloraError(f"metric {key!r} is {value}, not a whole number")
    return int(value)


def _scalar(metrics: MetricRecord, key: str) -> float:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FedloraError(f"metric {key!r} is missing or not a number")
    number = float(value)
    if not math.isfinite(number):
        raise FedloraError(f"metric {key!r} is {number}")
    return number
