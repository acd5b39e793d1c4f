"""The ``device`` key of spine-train, spine-predict and spine-doctor: one check, made when the config is composed.

``auto`` (CUDA when this machine has it, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. A device that
is not one of these, or that this machine does not have, is a `spine.cli.ConfigError` (one line, exit code 2)
before any data is read, instead of torch's RuntimeError in the middle of a run. Torch is imported only to ask
about a CUDA or MPS device, so composing a CPU config stays fast.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from spine.cli import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["check_device", "resolve_device"]

_FORM = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")


def check_device(device: str) -> str:
    """``device`` when this machine can run on it; else ConfigError naming the value and what to use instead."""
    if not _FORM.fullmatch(device):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    kind, _, index = device.partition(":")
    if kind == "cuda":
        _check_cuda(device, int(index or 0))
    elif kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={device}: MPS is not available on this machine; use device=cpu or device=auto")
    return device


def _check_cuda(device: str, index: int) -> None:
    """ConfigError unless this machine has CUDA device ``index``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        build = "" if torch.version.cuda else " (this torch is built without CUDA)"
        raise ConfigError(f"device={device}: CUDA is not available on this machine{build}; use device=cpu or "
                          "device=auto")
    if index >= count:
        raise ConfigError(f"device={device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def resolve_device(device: str) -> torch.device:
    """The torch device of a checked ``device`` value: ``auto`` is CUDA when available, else the CPU."""
    import torch

    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)
