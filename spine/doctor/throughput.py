"""Throughput: does the data loader keep up with the model on this machine?

The training loader of the configured stage (augmented, the run's ``num_workers`` and ``batch_size``; the first
batch, which starts the workers and opens the first volumes, is not timed) gives items (studies) per second;
the model's training step (forward, backward, AdamW; AMP and channels-last on CUDA, as spine-train) on one of
its batches gives the items per second it could consume. A loader slower than the model starves it (the GPU
idles): the advice says how many workers would feed it, and what to do when this machine's cores cannot.
"""

from __future__ import annotations

import math
import os
import time

from spine.doctor.learn import build_model, build_stage, stage_datasets, train_config
from spine.doctor.registry import check
from spine.doctor.result import FAIL, PASS, WARN, CheckResult


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_rate(dataset, batch_size: int, workers: int, n_batches: int, *, pin_memory: bool = False) -> dict:
    """Items per second of a training DataLoader over ``dataset`` (random items with replacement, ``(epoch,
    index)`` keys as in training): ``items_per_s``, ``items``, ``seconds`` (after the first batch),
    ``first_s`` (the first batch), ``batch`` (the first batch)."""
    from torch.utils.data import DataLoader, RandomSampler

    from spine.procs import WorkerInit
    from spine.train.engine import EpochSampler

    sampler = EpochSampler(RandomSampler(dataset, replacement=True, num_samples=batch_size * (n_batches + 1)))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        persistent_workers=False, pin_memory=pin_memory,
                        worker_init_fn=WorkerInit() if workers > 0 else None)  # workers end with the command
    started = time.perf_counter()
    batches = iter(loader)
    first = next(batches)
    first_s = time.perf_counter() - started
    started, items = time.perf_counter(), 0
    for batch in batches:
        items += len(batch["study_id"])
    seconds = time.perf_counter() - started
    return {"items_per_s": items / max(seconds, 1e-9), "items": items, "seconds": seconds, "first_s": first_s,
            "batch": first}


def step_rate(model, stage, batch: dict, rt, steps: int, lr: float = 1e-4) -> dict:
    """Items per second of training steps on one batch: ``items_per_s``, ``step_s`` (median of ``steps`` timed
    steps after a warm-up step)."""
    import numpy as np
    import torch

    from spine.train.engine import forward

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    batch = rt.to_device(batch)
    model.train()

    def sync():
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)

    def one():
        with rt.autocast():
            outputs = forward(model, stage.inputs(batch))
        loss, _ = stage.loss(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    one()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {"items_per_s": stage.batch_size(batch) / max(step_s, 1e-9), "step_s": step_s}


def throughput_advice(loader_items_s: float, model_items_s: float, workers: int, cores: int, device: str,
                      stage_name: str = "", cache_mb: float | None = None) -> tuple[str, str, list[str]]:
    """(status, summary, advice lines) from the two rates: pass when the loader outruns the model, else warn
    with the workers that would feed it (or what to do when this machine's cores cannot)."""
    ratio = loader_items_s / max(model_items_s, 1e-9)
    summary = (f"loader {loader_items_s:.2f} items/s ({workers} workers) vs model {model_items_s:.2f} items/s on "
               f"{device}: loader / model = {ratio:.2f}")
    if ratio >= 1.0:
        return PASS, summary + " (the model never waits)", []
    per_worker = loader_items_s / max(workers, 1)
    needed = math.ceil(1.2 * model_items_s / max(per_worker, 1e-9))
    lines = [f"the loader starves the model: it waits {100 * (1 - ratio):.0f}% of each step for data"]
    if needed <= max(cores - 1, 1):
        lines.append(f"raise num_workers to about {needed} (this machine has {cores} CPU cores)")
    else:
        lines.append(f"about {needed} loader workers would be needed, more than this machine's {cores} cores: "
                     "make each item cheaper")
        if stage_name == "landmarks":
            lines.append(f"keep the pooled volumes in memory across epochs: stage.cache_mb (now "
                         f"{cache_mb if cache_mb is not None else '?'} MB per worker) large enough for every study")
        lines.append("a crop cache (inputs sampled once, read back each epoch), smaller inputs or lighter "
                     "augmentation; on a GPU machine, more CPU cores per GPU")
    if workers == 0:
        lines.append("num_workers=0 loads in the training process itself: any worker overlaps loading with steps")
    return WARN, summary + " (the loader starves the model)", lines


@check("throughput", order=80, help=(
    "the loader's items/s against the model's step rate here, and the advice that follows"))
def check_throughput(ctx) -> CheckResult:
    from spine.train.runtime import seed_everything, setup_runtime, teardown, to_channels_last

    cfg, cache = ctx.cfg, ctx.cache
    tc = train_config(cfg, cache.root)
    stage = build_stage(tc, cache)
    train, _, _ = stage_datasets(stage, stage.folds()[0])
    if not len(train):
        return CheckResult("throughput", FAIL, f"no training studies for stage {tc.stage.name}")
    rt = setup_runtime(tc.device, tc.amp, tc.channels_last)
    try:
        loader = loader_rate(train, tc.batch_size, tc.num_workers, cfg.throughput_batches,
                             pin_memory=rt.device.type == "cuda")
        seed_everything(tc.seed)
        model = build_model(tc, stage, rt.device)
        if rt.channels_last:
            to_channels_last(model)
        steps = step_rate(model, stage, loader["batch"], rt, cfg.throughput_steps)
    finally:
        teardown(rt)
    cores = cpu_cores()
    status, summary, advice = throughput_advice(loader["items_per_s"], steps["items_per_s"], tc.num_workers, cores,
                                                str(rt.device), tc.stage.name, getattr(tc.stage, "cache_mb", None))
    summary = f"{tc.stage.name}, {tc.model.name}, batch {tc.batch_size}: {summary}"
    numbers = {"loader_items_per_s": loader["items_per_s"], "loader_items": loader["items"],
               "loader_first_batch_s": loader["first_s"], "model_items_per_s": steps["items_per_s"],
               "model_step_s": steps["step_s"], "ratio": loader["items_per_s"] / max(steps["items_per_s"], 1e-9),
               "num_workers": tc.num_workers, "batch_size": tc.batch_size, "cpu_cores": cores,
               "device": str(rt.device), "model": tc.model.name, "stage": tc.stage.name}
    return CheckResult("throughput", status, summary, advice, numbers)
