"""Run-folder files: weights as safetensors, resumable training state, atomic writes.

A fold folder holds ``last.safetensors`` (+ ``last_ema.safetensors``) and ``checkpoint.pt`` after every
epoch, and ``model.safetensors`` + ``model.json`` (name and constructor arguments) when the fold is done.
Each file is written to a temporary name and renamed, so a kill leaves the previous epoch intact; the
weights carry their epoch in the safetensors metadata and resume checks it against ``checkpoint.pt``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT = "checkpoint.pt"
LAST = "last.safetensors"
LAST_EMA = "last_ema.safetensors"
FINAL = "model.safetensors"
MODEL_JSON = "model.json"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save_weights(model: torch.nn.Module, path: Path, epoch: int | None = None) -> None:
    """State dict of ``model`` as safetensors (contiguous CPU copies), atomically."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    meta = {"epoch": str(epoch)} if epoch is not None else None
    tmp = _tmp(path)
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    unwrap(model).load_state_dict(load_file(str(path)), strict=True)


def weights_epoch(path: Path) -> int | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        value = (f.metadata() or {}).get("epoch")
    return None if value in (None, "None") else int(value)


def save_torch(obj, path: Path) -> None:
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_json(obj, path: Path) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def save_checkpoint(folder: Path, epoch: int, model, ema, optimizer, scheduler, scaler, rng: dict) -> None:
    """Everything needed to continue after ``epoch`` (0-based, completed)."""
    save_weights(model, folder / LAST, epoch)
    if ema is not None:
        save_weights(ema.module, folder / LAST_EMA, epoch)
    save_torch({"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema_updates": getattr(ema, "updates", 0), "rng": rng},
               folder / CHECKPOINT)


def load_checkpoint(folder: Path, model, ema, optimizer, scheduler, scaler) -> tuple[int, dict]:
    """Restore a checkpoint; returns (last completed epoch, RNG state to restore)."""
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)  # no pickled code
    epoch = int(state["epoch"])
    for name in [LAST] + ([LAST_EMA] if ema is not None else []):
        if weights_epoch(folder / name) != epoch:
            raise RuntimeError(f"{folder / name} is not from epoch {epoch} of {folder / CHECKPOINT}: "
                               "the run was killed while saving; start over with overwrite=true")
    load_weights(model, folder / LAST)
    if ema is not None:
        load_weights(ema.module, folder / LAST_EMA)
        ema.updates = int(state.get("ema_updates", 0))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return epoch, state["rng"]
