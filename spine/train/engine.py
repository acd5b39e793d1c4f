"""The training loop, shared by every stage: ``train_one_epoch``, ``validate``, ``fit``.

Plain PyTorch, to be read top to bottom: AdamW with a linear-warmup cosine schedule, gradient clipping,
AMP (bf16, or fp16 with a gradient scaler) and channels-last on CUDA, optional ``torch.compile``, an EMA of
the weights, DistributedDataParallel under ``torchrun``, a checkpoint after every epoch for ``resume``.
What is trained comes from the :class:`~spine.train.stage.Stage`: datasets, model arguments, loss,
predictions and metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from spine.errors import SpineError
from spine.procs import WorkerInit
from spine.progress import progress as show_progress
from spine.run_folder import (
    CHECKPOINT,
    CONFIG_YAML,
    METRICS_JSON,
    MODEL_JSON,
    OOF_CSV,
    RUN_JSON,
    TEST_CSV,
    RunFolderError,
)
from spine.train import checkpoint as ckpt
from spine.train.runtime import (
    Runtime,
    gather_objects,
    rng_state,
    seed_everything,
    set_rng_state,
    sum_over_processes,
    to_channels_last,
)


class EMA:
    """Exponential moving average of a model's weights (buffers are copied), with a short warmup."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(ckpt.unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = float(decay), 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        source = ckpt.unwrap(model).state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(source[name].detach(), 1.0 - decay)
            else:
                value.copy_(source[name])


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``: datasets seed their random transforms from it, even in persistent workers."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int, min_ratio: float):
    """Per-step LR factor: linear warmup to 1, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only (not on biases and norm scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def forward(model, inputs):
    """``model(inputs)``, or ``model(*inputs)`` when the stage gives a tuple (image, level, flags, ...)."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def train_step(model, batch, optimizer, scheduler, scaler, stage, rt: Runtime, grad_clip: float = 0.0):
    """One optimisation step on a batch already on the device (autocast, scaled backward, clipping, scheduler);
    returns the loss (not synchronised) and its parts."""
    with rt.autocast():
        outputs = forward(model, stage.inputs(batch))
    loss, parts = stage.loss(outputs, batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss, parts


def train_one_epoch(model, loader, optimizer, scheduler, scaler, stage, rt: Runtime, *, ema: EMA | None = None,
                    grad_clip: float = 0.0, max_steps: int = 0, progress: bool = True, desc: str = "") -> dict:
    """One pass over ``loader``; returns mean loss and parts, throughput, and data vs step time per batch.

    The bar shows on a terminal only: in a log file the epoch's summary line (printed by :func:`fit`) is all.
    """
    model.train()
    steps = len(loader) if max_steps <= 0 else min(len(loader), max_steps)
    sums: dict[str, float] = {}
    n_samples, data_s, step_s = 0, 0.0, 0.0
    started = time.perf_counter()
    bar = show_progress(steps, desc, "step", enabled=progress and rt.is_main, lines=0, leave=False)
    batches = batches_of(loader)
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = rt.to_device(next(batches))
        t1 = time.perf_counter()
        loss, parts = train_step(model, batch, optimizer, scheduler, scaler, stage, rt, grad_clip)
        if ema is not None:
            ema.update(model)
        size = stage.batch_size(batch)
        for key, value in {"loss": loss.detach(), **parts}.items():
            sums[key] = sums.get(key, 0.0) + float(value) * size  # float() waits for the step to finish
        n_samples += size
        data_s, step_s = data_s + (t1 - t0), step_s + (time.perf_counter() - t1)
        bar.update()
        bar.set_postfix(loss=f"{sums['loss'] / n_samples:.4f}",
                        samples_s=f"{n_samples / (time.perf_counter() - started):.1f}")
    bar.close()
    elapsed = time.perf_counter() - started
    totals = sum_over_processes({**sums, "_n": n_samples}, rt)
    n_all = totals.pop("_n")
    out = {k: v / max(n_all, 1) for k, v in sorted(totals.items())}
    out["samples_per_s"] = n_all / max(elapsed, 1e-9)  # all processes together
    out["data_s_per_batch"] = data_s / max(steps, 1)  # waiting for the loader (this process)
    out["step_s_per_batch"] = step_s / max(steps, 1)  # forward + backward + optimizer step
    return out


@torch.inference_mode()
def validate(model, loader, stage, rt: Runtime, with_loss: bool = True) -> tuple[pd.DataFrame, dict]:
    """Predictions of ``model`` on ``loader`` (this process's shard), gathered from every process.

    Returns the prediction table (every process) and the mean loss parts (empty without ``with_loss``).
    """
    model.eval()
    rows: list[dict] = []
    sums: dict[str, float] = {}
    n = 0
    for batch in batches_of(loader):
        batch = rt.to_device(batch)
        with rt.autocast():
            outputs = forward(model, stage.inputs(batch))
        if with_loss:
            loss, parts = stage.loss(outputs, batch)
            size = stage.batch_size(batch)
            for key, value in {"loss": loss, **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * size
            n += size
        rows += stage.predict(outputs, batch)
    totals = sum_over_processes({**sums, "_n": n}, rt)  # a process may have had no batch
    n_all = totals.pop("_n")
    losses = {k: v / max(n_all, 1) for k, v in sorted(totals.items())}
    rows = [row for part in gather_objects(rows, rt) for row in part]
    return pd.DataFrame(rows), losses


class _Shard(Sampler):
    """Indices ``rank, rank + world, ...``: evaluation without the padding of DistributedSampler."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _loader(dataset, batch_size: int, sampler, workers: int, rt: Runtime, worker_init_fn=None) -> DataLoader:
    """The DataLoader of every stage. Its worker processes end with this process, even a SIGKILLed one
    (`spine.procs.WorkerInit`, chained before ``worker_init_fn``); iterate it with `batches_of`."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=rt.device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=2 if workers > 0 else None,
                      worker_init_fn=WorkerInit(worker_init_fn) if workers > 0 else worker_init_fn)


def batches_of(loader: DataLoader) -> Iterator:
    """The batches of ``loader``. A `SpineError` (e.g. a damaged cache file, `CacheError`) raised while a batch
    is loaded arrives as itself with its own one-line message, also from a worker process, whose exceptions
    torch re-raises with the worker's whole traceback as the message (`_from_worker`)."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except SpineError as err:
            clean = _from_worker(err)
            if clean is err:  # raised in this process: as it is
                raise
            raise clean from None
        yield batch


def _from_worker(err: SpineError) -> SpineError:
    """``err`` with the message it was raised with in a DataLoader worker, and which worker: torch re-raises it
    as ``type(err)(text)``, its text ``Caught X in DataLoader worker process N.``, then the worker's traceback,
    whose last line is ``module.X: message``. ``err`` itself when it did not come from a worker."""
    text = str(err.args[0]) if err.args else ""
    name = f"{type(err).__name__}: "
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return err
    last = [line for line in text.splitlines() if line.strip()][-1]  # the worker's "module.X: message"
    message = last.split(name, 1)[1] if name in last else last
    worker = text.split(".", 1)[0].removeprefix(f"Caught {type(err).__name__} ")  # "in DataLoader worker process N"
    try:
        return type(err)(f"{message} ({worker})")
    except TypeError:  # a subclass with another constructor: keep torch's text (one line, shortened)
        return err


def fit(cfg, stage, fold: int, folder: Path, rt: Runtime) -> dict:
    """Train one fold into ``folder``; returns the final validation metrics.

    Folder afterwards: config.yaml, run.json, model.json, model.safetensors, checkpoint.pt + last*.safetensors,
    metrics.csv, tb/, val_epochNNN.png, oof.csv, test.csv, metrics.json.
    """
    folder = Path(folder)
    finished, started = _open_folder(cfg, fold, folder, rt)
    if finished is not None:
        return finished

    # ---- data, model, optimisation
    seed_everything(cfg.seed + fold)
    train_ds, val_ds, test_ds = stage.datasets(fold)
    model, train_model, ema, model_kwargs = _make_model(cfg, stage, rt)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    sampler = EpochSampler(stage.train_sampler(train_ds, rt.rank, rt.world_size)
                           or DistributedSampler(train_ds, num_replicas=rt.world_size, rank=rt.rank, shuffle=True,
                                                 seed=cfg.seed))
    train_loader = _loader(train_ds, cfg.batch_size, sampler, cfg.num_workers, rt)
    val_loader = _loader(val_ds, cfg.batch_size, _Shard(len(val_ds), rt.rank, rt.world_size), cfg.num_workers, rt)
    steps = len(train_loader) if cfg.max_steps_per_epoch <= 0 else min(len(train_loader), cfg.max_steps_per_epoch)
    scheduler = warmup_cosine(optimizer, cfg.epochs * steps, round(cfg.optim.warmup_epochs * steps),
                              cfg.optim.min_lr_ratio)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    start = 0
    if cfg.resume and started:
        last, rng = ckpt.load_checkpoint(folder, model, ema, optimizer, scheduler, scaler)
        set_rng_state(rng)
        start = last + 1
        _say(rt, f"[train] fold {fold}: resuming after epoch {last + 1} of {cfg.epochs}")
    if rt.is_main:
        _write_run_files(cfg, stage, fold, folder, model, model_kwargs, (train_ds, val_ds, test_ds), rt)
    log = None
    if rt.is_main:
        from spine.train.log import MetricsLog

        log = MetricsLog(folder, start, cfg.tensorboard)
    _say(rt, f"[train] fold {fold}: {len(train_ds)} train / {len(val_ds)} val studies, {cfg.model.name} "
             f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on {rt.device}"
             f"{f' x{rt.world_size}' if rt.distributed else ''}, {steps} steps/epoch -> {folder}")

    # ---- epochs
    eval_model = model if ema is None else ema.module
    predictions, metrics = None, {}
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        stats = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler, stage, rt, ema=ema,
                                grad_clip=cfg.optim.grad_clip, max_steps=cfg.max_steps_per_epoch,
                                progress=cfg.progress, desc=f"fold {fold} epoch {epoch + 1}/{cfg.epochs}")
        row = {f"train/{k}": v for k, v in stats.items()}
        row["lr"] = optimizer.param_groups[0]["lr"]
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            predictions, losses = validate(eval_model, val_loader, stage, rt)
            row.update({f"val/{k}": v for k, v in losses.items()})
            if rt.is_main:
                metrics = stage.evaluate(predictions)
                row.update({f"val/{k}": v for k, v in metrics.items()})
                stage.report(predictions, val_ds, folder / f"val_epoch{epoch + 1:03d}.png")
        row["epoch_s"] = time.perf_counter() - t0
        if rt.is_main:
            log.log(epoch, row)
            ckpt.save_checkpoint(folder, epoch, model, ema, optimizer, scheduler, scaler, rng_state())
        rt.barrier()
        _say(rt, _summary(fold, epoch, cfg.epochs, row, stage.monitor))

    # ---- final weights and predictions
    if predictions is None:  # resumed after the last epoch's checkpoint: predict again
        predictions, _ = validate(eval_model, val_loader, stage, rt)
        metrics = stage.evaluate(predictions) if rt.is_main else {}
    _finish(cfg, stage, fold, folder, eval_model, predictions, metrics, test_ds, rt)
    if log is not None:
        log.close()
    rt.barrier()
    return metrics


def _open_folder(cfg, fold: int, folder: Path, rt: Runtime) -> tuple[dict | None, bool]:
    """(the metrics of a fold already finished there and ``resume`` set, else None; whether a run was started
    there). A started or finished fold in the way without ``resume`` or ``overwrite`` is a RunFolderError;
    ``overwrite`` clears it. The folder exists afterwards."""
    done = (folder / ckpt.FINAL).is_file() and (folder / METRICS_JSON).is_file()
    started = (folder / CHECKPOINT).is_file()
    if (done or started) and not (cfg.resume or cfg.overwrite):
        raise RunFolderError(f"{folder} holds a {'finished' if done else 'started'} run: pass resume=true to "
                              "continue it or overwrite=true to start over")
    if cfg.resume and done:
        _say(rt, f"[train] fold {fold}: already finished in {folder}")
        return json.loads((folder / METRICS_JSON).read_text()), started
    if cfg.overwrite and not cfg.resume and rt.is_main and folder.exists():
        shutil.rmtree(folder)
    rt.barrier()
    folder.mkdir(parents=True, exist_ok=True)
    return None, started


def _make_model(cfg, stage, rt: Runtime):
    """(the model on the device, the module the steps call (DDP-wrapped, compiled), its EMA or None, the
    constructor keywords: the stage's, then model.args)."""
    from spine.models import create_model

    stage_kwargs = stage.model_kwargs()
    clash = sorted(set(stage_kwargs) & set(cfg.model.args))
    if clash:
        raise ValueError(f"model.args {clash} are set by the stage from the data; remove them")
    model_kwargs = {**stage_kwargs, **cfg.model.args}
    model = create_model(cfg.model.name, weights=cfg.model.weights, **model_kwargs).to(rt.device)
    if rt.channels_last:
        to_channels_last(model)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    train_model = model
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda"
                                              else None)
    if cfg.compile:
        train_model = torch.compile(train_model)  # after DDP wrapping, as PyTorch recommends
    return model, train_model, ema, model_kwargs


def _write_run_files(cfg, stage, fold: int, folder: Path, model, model_kwargs: dict, datasets, rt: Runtime) -> None:
    """config.yaml (the fold's), model.json (name and constructor keywords) and run.json (data sizes, device)."""
    from spine.cli import to_yaml

    train_ds, val_ds, test_ds = datasets
    (folder / CONFIG_YAML).write_text(to_yaml(dataclasses.replace(cfg, fold=str(fold))))
    ckpt.save_json({"name": cfg.model.name, "kwargs": model_kwargs}, folder / MODEL_JSON)
    ckpt.save_json({"stage": stage.name, "fold": fold, "cache_id": stage.cache.cache_id,
                    "cache_root": str(stage.cache.root), "n_train": len(train_ds), "n_val": len(val_ds),
                    "n_test": len(test_ds) if test_ds is not None else 0, "world_size": rt.world_size,
                    "backend": rt.backend, "device": str(rt.device), "amp": str(rt.amp_dtype), "torch": torch.__version__,
                    "parameters": sum(p.numel() for p in model.parameters())}, folder / RUN_JSON)


def _finish(cfg, stage, fold: int, folder: Path, eval_model, predictions, metrics: dict, test_ds, rt: Runtime) -> None:
    """The fold's test predictions (``predict_test``), then oof.csv, test.csv, the final weights and metrics.json
    (main process)."""
    test_predictions = None
    if cfg.predict_test and test_ds is not None and len(test_ds):
        test_loader = _loader(test_ds, cfg.batch_size, _Shard(len(test_ds), rt.rank, rt.world_size), 0, rt)
        test_predictions, _ = validate(eval_model, test_loader, stage, rt, with_loss=False)
    if rt.is_main:
        predictions.assign(fold=fold).to_csv(folder / OOF_CSV, index=False)
        if test_predictions is not None:
            test_predictions.assign(fold=fold).to_csv(folder / TEST_CSV, index=False)
        ckpt.save_weights(eval_model, folder / ckpt.FINAL)
        ckpt.save_json(metrics, folder / METRICS_JSON)


def _say(rt: Runtime, message: str) -> None:
    if rt.is_main:
        print(message, flush=True)


def _summary(fold: int, epoch: int, epochs: int, row: dict, monitor: str) -> str:
    text = f"[train] fold {fold} epoch {epoch + 1}/{epochs}: loss {row['train/loss']:.4f}"
    if "val/loss" in row:
        text += f", val loss {row['val/loss']:.4f}"
    if f"val/{monitor}" in row:
        text += f", {monitor} {row[f'val/{monitor}']:.4g}"
    return (text + f" | {row['train/samples_per_s']:.1f} samples/s, loader {row['train/data_s_per_batch']:.3f} s"
            f" vs step {row['train/step_s_per_batch']:.3f} s per batch, {row['epoch_s']:.1f} s")
