"""Several processes launched together (`accelerate launch`, `torchrun`): who does which job.

One process (no launcher) is the whole world: rank 0 of 1, with the device chosen as usual.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Share:
    index: int
    count: int
    device: torch.device | None = None  # this process's device when launched as several

    def mine(self, job: int) -> bool:
        """Jobs are dealt round-robin, so each is done by exactly one process."""
        return job % self.count == self.index

    def wait_for_everyone(self) -> None:
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def launched_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def on_cpu(device: str | None) -> bool:
    """accelerate joins CPU processes into one run only when told they are on the CPU."""
    return device == "cpu" or (device is None and not torch.cuda.is_available())


def current_share(device: str | None = None) -> Share:
    if launched_processes() <= 1:
        return Share(0, 1)
    from accelerate import PartialState

    state = PartialState(cpu=on_cpu(device))
    return Share(state.process_index, state.num_processes, state.device)
