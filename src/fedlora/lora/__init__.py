"""LoRA adapter state: settings, factors, their scale-folded form, client updates, fresh slots."""

from fedlora.lora.factors import FoldedFactors, LoraFactors
from fedlora.lora.merged import MergedRound
from fedlora.lora.settings import LoraSettings, lora_scale
from fedlora.lora.slot_init import fresh_lora_A
from fedlora.lora.update import ClientUpdate

__all__ = [
    "ClientUpdate",
    "FoldedFactors",
    "LoraFactors",
    "LoraSettings",
    "MergedRound",
    "fresh_lora_A",
    "lora_scale",
]
