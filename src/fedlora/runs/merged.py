"""A folder of merged rounds (FLoRA): one safetensors file per round, written atomically.

The run directory keeps one (a resume re-applies them in order, so the base weights are
bit-identical to an uninterrupted run's), and so does a Flower node that runs a fresh process
per message (so it applies each merge once, not from scratch every round).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fedlora.errors import FedloraError
from fedlora.lora import FoldedFactors, MergedRound
from fedlora.runs import faults


@dataclass(frozen=True)
class MergedStore:
    directory: Path

    def save(self, merged: MergedRound) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, factors in merged.modules.items():
            tensors[f"{name}/A"] = factors.A.contiguous()
            tensors[f"{name}/B"] = factors.B.contiguous()
        path = self._file(merged.round)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        faults.point("merged:write")
        save_file(tensors, str(tmp))
        faults.point("merged:rename")
        os.replace(tmp, path)

    def load(self, until: int) -> list[MergedRound]:
        """The stored rounds up to ``until``, in round order."""
        rounds: list[MergedRound] = []
        for round_index, path in self._files():
            if round_index > until:
                continue
            try:
                tensors = load_file(str(path))
            except (SafetensorError, OSError) as error:
                raise FedloraError(f"merged round file {path} is corrupt ({error})") from None
            pairs: dict[str, dict[str, Tensor]] = {}
            for key, tensor in tensors.items():
                name, _, which = key.rpartition("/")
                pairs.setdefault(name, {})[which] = tensor
            modules = {n: FoldedFactors(A=p["A"], B=p["B"]) for n, p in pairs.items()}
            rounds.append(MergedRound(round=round_index, modules=modules))
        return rounds

    def drop_after(self, round_index: int) -> None:
        """Remove the rounds after ``round_index`` (a resume runs them again)."""
        for stored, path in self._files():
            if stored > round_index:
                path.unlink()

    def _files(self) -> list[tuple[int, Path]]:
        paths = sorted(self.directory.glob("round-*.safetensors"))
        return [(int(path.stem.removeprefix("round-")), path) for path in paths]

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _file(self, round_index: int) -> Path:
        return self.directory / f"round-{round_index:05d}.safetensors"
