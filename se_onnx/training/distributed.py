"""Where training runs: the device, the precision, and the process group when torchrun starts it.

`se-onnx train` runs in one process, or in several under `torchrun`, which sets RANK, WORLD_SIZE
and LOCAL_RANK in each process's environment (one node or many, `--nnodes` / `--rdzv-endpoint`).
Then each process joins PyTorch's process group (NCCL on CUDA, gloo on the CPU), trains its share
of every batch inside DistributedDataParallel, and the metrics are summed across processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from se_onnx.errors import OptionError
from se_onnx.training.options import AMP_MODES, DEVICES_HELP

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class Placement:
    """This process's device and place among the processes training together."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the model, the checkpoint, the table and the plot."""
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        """`values` summed over every process (as they are in one process)."""
        if not self.distributed:
            return values
        # float64: counts of samples and sums of losses stay exact well past a float32's 2**24.
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def torchrun_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process, else None."""
    if not all(name in os.environ for name in _TORCHRUN_VARIABLES):
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def resolve_device(requested: str, local_rank: int = 0, *, distributed: bool = False) -> torch.device:
    """The torch device `--device` names; `auto` is CUDA when this torch sees a GPU, else the CPU.
    Under torchrun each process takes the GPU of its local rank."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if requested != "cuda" and not (requested.startswith("cuda:") and requested[5:].isdigit()):
        raise OptionError("device", f"must be {DEVICES_HELP}, not {requested!r}")
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:  # ROCm builds answer to cuda
        raise OptionError(
            "device",
            f"{requested} needs a CUDA build of PyTorch, and this one ({torch.__version__}) is a CPU build: "
            "install one from https://pytorch.org/get-started/locally/ (e.g. pip install torch "
            "--index-url https://download.pytorch.org/whl/cu128), or pass --device cpu",
        )
    count = torch.cuda.device_count()
    if count == 0:
        raise OptionError("device", f"{requested}: this PyTorch ({torch.__version__}) sees no GPU")
    if distributed:
        if requested != "cuda":
            raise OptionError(
                "device",
                f"under torchrun pass --device cuda (each process takes its local rank's GPU), not {requested}",
            )
        index = local_rank
    else:
        index = int(requested[5:]) if requested.startswith("cuda:") else 0
    if index >= count:
        raise OptionError("device", f"cuda:{index} does not exist: this machine has {count} GPU(s)")
    return torch.device("cuda", index)


def check_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp`, or None when off. fp16 needs a gradient scaler and CUDA: on the
    CPU, bf16 is the mixed precision that keeps float32's range."""
    if amp not in AMP_MODES:
        raise OptionError("amp", f"must be one of {', '.join(AMP_MODES)}, not {amp!r}")
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise OptionError("amp", "fp16 runs on CUDA only (with a gradient scaler); on the CPU pass --amp bf16")
    return torch.bfloat16 if amp == "bf16" else torch.float16


@contextlib.contextmanager
def placed(device: str) -> Iterator[Placement]:
    """This process's placement for the duration of training: under torchrun, the process group is
    joined on entry and left on exit, so a failing rank's error surfaces and torchrun ends the rest."""
    world = torchrun_world()
    if world is None or world[1] == 1:
        yield Placement(resolve_device(device))
        return
    rank, world_size, local_rank = world
    target = resolve_device(device, local_rank, distributed=True)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group(
        "nccl" if target.type == "cuda" else "gloo", device_id=target if target.type == "cuda" else None
    )
    try:
        yield Placement(target, rank, world_size, local_rank)
    finally:
        dist.destroy_process_group()
