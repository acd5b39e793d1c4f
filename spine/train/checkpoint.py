"""Run-folder files written by training: weights as safetensors, resumable training state, atomic writes.
(Which files a run folder holds, and reading a finished run back: :mod:`spine.run_folder`.)

A fold folder holds, after every epoch, the weights of that epoch under epoch-numbered names,
``last.e<NNNN>.safetensors`` (+ ``last_ema.e<NNNN>.safetensors``), and ``checkpoint.pt`` (optimizer,
schedule, RNG states, and the names of the weights files that go with it); when the fold is done also
``model.safetensors`` + ``model.json`` (name and constructor arguments).

A checkpoint is a pair, weights + state, that must come from the same epoch. The new epoch's weights are
written beside the previous epoch's, then ``checkpoint.pt`` (to a temporary name, then ``os.replace``): that
rename is the switch from the old pair to the new one, so a kill at any moment leaves ``checkpoint.pt`` naming
a complete pair, and resume continues after the last epoch whose pair was complete. The files of older epochs
(and the temporary files of a killed save) are deleted after the switch. The weights also carry their epoch in
the safetensors metadata, and resume checks it against ``checkpoint.pt``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spine.run_folder import CHECKPOINT, MODEL_WEIGHTS

FINAL = MODEL_WEIGHTS  # the finished fold's weights (the file names of a run folder: spine.run_folder)
LAST = "last.safetensors"  # the weights of checkpoints written before the epoch-numbered names (still resumed)
LAST_EMA = "last_ema.safetensors"

log = logging.getLogger(__name__)


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


def epoch_weights_name(kind: str, epoch: int) -> str:
    """``last.e0003.safetensors``: the weights of ``kind`` (``last`` or ``last_ema``) after ``epoch`` (0-based)."""
    return f"{kind}.e{epoch:04d}.safetensors"


def save_checkpoint(folder: Path, epoch: int, model, ema, optimizer, scheduler, scaler, rng: dict) -> None:
    """Everything needed to continue after ``epoch`` (0-based, completed); the previous pair stays valid until
    ``checkpoint.pt`` is replaced (see the module docstring)."""
    folder = Path(folder)
    weights = {"last": epoch_weights_name("last", epoch)}
    save_weights(model, folder / weights["last"], epoch)
    if ema is not None:
        weights["last_ema"] = epoch_weights_name("last_ema", epoch)
        save_weights(ema.module, folder / weights["last_ema"], epoch)
    save_torch({"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema_updates": getattr(ema, "updates", 0), "rng": rng,
                "weights": weights}, folder / CHECKPOINT)
    remove_stale(folder, keep=set(weights.values()))


def remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete the ``last*.safetensors`` not in ``keep`` and the temporary files of killed saves."""
    stale = [p for p in folder.glob("last*.safetensors") if p.name not in keep]
    stale += list(folder.glob(".last*.tmp")) + list(folder.glob(f".{CHECKPOINT}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
        log.debug("removed %s", path)


def checkpoint_weights(folder: Path, state: dict | None = None) -> dict[str, Path]:
    """``{"last": path, "last_ema": path}`` (``last_ema`` only with EMA) of the checkpoint in ``folder``."""
    folder = Path(folder)
    if state is None:
        state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)
    names = state.get("weights") or {"last": LAST, "last_ema": LAST_EMA}  # older checkpoints: fixed names
    return {kind: folder / name for kind, name in names.items() if "weights" in state or (folder / name).is_file()}


def load_checkpoint(folder: Path, model, ema, optimizer, scheduler, scaler) -> tuple[int, dict]:
    """Restore a checkpoint; returns (last completed epoch, RNG state to restore)."""
    folder = Path(folder)
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)  # no pickled code
    epoch = int(state["epoch"])
    paths = checkpoint_weights(folder, state)
    for kind in ["last"] + (["last_ema"] if ema is not None else []):
        path = paths.get(kind)
        if path is None or not path.is_file() or weights_epoch(path) != epoch:
            raise RuntimeError(f"{path or folder / f'{kind}.*.safetensors'} is not the {kind} weights of epoch "
                               f"{epoch + 1} of {folder / CHECKPOINT}: start over with overwrite=true")
    load_weights(model, paths["last"])
    if ema is not None:
        load_weights(ema.module, paths["last_ema"])
        ema.updates = int(state.get("ema_updates", 0))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return epoch, state["rng"]
