"""What a client sends back after local training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from fedlora.lora.factors import LoraFactors


@dataclass(frozen=True)
class ClientUpdate:
    """A client's trained adapter: LoRA factors per module, dense trainable tensors, data size.

    ``client_id`` is the client's index (0 to N-1), as in sampling, rank policies and transports.
    ``dense`` holds non-LoRA trainable tensors (a classification head, PEFT ``modules_to_save``);
    they have the same shape on every client and are averaged with the client weights.
    """

    client_id: int
    modules: Mapping[str, LoraFactors]
    num_examples: int
    dense: Mapping[str, Tensor] = field(default_factory=dict)
