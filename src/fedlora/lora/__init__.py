"""LoRA adapter state: factors, their scale-folded form, client updates, fresh slot init."""

from fedlora.lora.factors import FoldedFactors, LoraFactors, lora_scale
from fedlora.lora.merged import MergedRound
from fedlora.lora.slot_init import fresh_lora_A
from fedlora.lora.update import ClientUpdate

__all__ = [
    "ClientUpdate",
    "FoldedFactors",
    "LoraFactors",
    "MergedRound",
    "fresh_lora_A",
    "lora_scale",
]
