"""Where and how a run executes: device, distributed process group, mixed precision, seeding.

Everything CUDA-specific (AMP, channels-last) silently becomes a no-op on CPU, so one config runs on a
laptop and on a GPU. Distributed runs are detected from the variables ``torchrun`` sets (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``TORCHELASTIC_RUN_ID``); the backend is NCCL on CUDA and gloo on CPU. Under
``torchrun`` the process group is joined even with one process, so a one-GPU ``torchrun`` exercises the same
DDP + NCCL path as a multi-GPU one (``benchmarks/gpu.py``).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from spine.device import resolve_device


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None  # None: full precision
    channels_last: bool = False
    backend: str | None = None  # process-group backend (nccl | gloo) when one was joined

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """Mixed-precision context on CUDA; a no-op elsewhere."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: dict) -> dict:
        """Tensors of a batch to the device (images channels-last on CUDA when asked)."""
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, non_blocking=True)
                if self.channels_last and value.is_floating_point() and value.dim() in (4, 5):
                    value = value.contiguous(memory_format=_memory_format(value.dim()))
            out[key] = value
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _memory_format(dim: int) -> torch.memory_format:
    return torch.channels_last if dim == 4 else torch.channels_last_3d


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Convert 4D parameters to channels_last and 5D ones to channels_last_3d (models may mix 2D and 3D)."""
    for param in model.parameters():
        if param.dim() in (4, 5):
            param.data = param.data.contiguous(memory_format=_memory_format(param.dim()))
    return model


def setup_runtime(device: str = "auto", amp: str = "bf16", channels_last: bool = True) -> Runtime:
    """Pick the device (:func:`spine.device.resolve_device`), join the process group under torchrun, and decide
    AMP / channels-last."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)  # a ConfigError for a device this machine does not have
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    launched = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun, even with one process
    if launched and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    backend = dist.get_backend() if launched and dist.is_initialized() else None
    amp_dtype = None
    if dev.type == "cuda" and amp != "none":
        amp_dtype = torch.bfloat16 if amp == "bf16" and torch.cuda.is_bf16_supported() else torch.float16
    return Runtime(dev, rank, world_size, local_rank, amp_dtype, channels_last and dev.type == "cuda", backend)


def teardown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, for a checkpoint."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # The numpy key array travels as a tensor so that checkpoints load with torch.load(weights_only=True).
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sum_over_processes(values: dict[str, float], rt: Runtime) -> dict[str, float]:
    """Sum named floats over the processes; a name missing in a process counts as 0 there."""
    total: dict[str, float] = {}
    for part in gather_objects(values, rt):
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def gather_objects(obj, rt: Runtime) -> list:
    """Every process's ``obj``, in rank order (a one-element list when not distributed)."""
    if not rt.distributed:
        return [obj]
    out: list = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out
