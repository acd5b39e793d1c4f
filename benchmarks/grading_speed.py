"""Grading throughput: the crop loader against the model, and every registered grading model's speed.

    .venv/bin/python benchmarks/grading_speed.py [--cache DIR] [--data DIR] [--crop 64] [--batch 8]
                                                 [--models grading_3d,grading_25d,...] [--workers 2]

1. Loader: training items (a study = 5 levels x 3 series crops, augmented) per second from the cache with
   ``--workers`` loader processes, as crops/s (one crop = one level, all channels), against the training
   step of the chosen model on the same batch: the ratio says whether the loader outruns the model.
2. Models: for each registered grading model, training (forward + backward + AdamW step) and inference
   levels/s, on CPU; on CUDA also AMP (bf16) against fp32, and the ratio. One level is one crop of
   ``--crop``^3 x 3 channels for the crop models, and its 5 conditions x 2 views x ``--slices`` x ``--view``^2
   for the views models (``grading_views*``).
No assertions: numbers and ratios, measured in the same run. Makes the small preset and its cache if missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from landmarks import ensure_data  # noqa: E402


def loader_rate(cache_dir: Path, crop: int, batch: int, workers: int, n_batches: int) -> dict:
    """Studies and crops per second of the training loader (augmented items, label-point centres)."""
    rate = stage_loader_rate(["stage=grading", f"cache_dir={cache_dir}", f"stage.crop.size=[{crop},{crop},{crop}]"],
                             batch, workers, n_batches)
    return {**rate, "crops_per_s": 5 * rate["studies_per_s"]}


def stage_loader_rate(overrides: list[str], batch: int, workers: int, n_batches: int, pin_memory: bool = False,
                      fold: int = 0) -> dict:
    """Training items (studies) per second of any stage's loader on its cache, ``spine-train`` ``overrides``
    (augmented items; the first batch, with worker start-up and first volume opens, is not timed)."""
    import torch

    from spine.cache import Cache
    from spine.train.config import load_config
    from spine.train.engine import EpochSampler
    from spine.train.stage import build_stage

    cfg = load_config(overrides)
    train, _, _ = build_stage(cfg, Cache.open(cfg.cache_dir)).datasets(fold)
    sampler = EpochSampler(torch.utils.data.RandomSampler(train, replacement=True, num_samples=batch * n_batches))
    loader = torch.utils.data.DataLoader(train, batch_size=batch, sampler=sampler, num_workers=workers,
                                         persistent_workers=False, pin_memory=pin_memory)
    it = iter(loader)
    first = next(it)
    started = time.perf_counter()
    n = 0
    for b in it:
        n += len(b["study_id"])
    seconds = time.perf_counter() - started
    return {"studies_per_s": n / max(seconds, 1e-9), "studies": n, "seconds": seconds, "batch": first}


def model_rates(name: str, crop: int, batch: int, device: str, amp: bool, steps: int = 4,
                view: tuple[int, int] = (3, 32)) -> dict:
    """Levels per second of one model: training step and inference on ``batch`` levels (crops of 3 x crop^3,
    or ``view = (slices, px)`` views for a views model)."""
    import torch

    from spine.data.inputs import grading_input
    from spine.models import create_model
    from spine.train.config import load_config

    # what the model declares it reads, with the grading stage's defaults, at the benchmark's size
    reader = grading_input(name, load_config(["stage=grading"]).stage).resized([crop] * 3, (view[0], view[1], view[1]))
    model = create_model(name, **reader.model_kwargs()).to(device)
    x = torch.randn(batch, *reader.item_shape, device=device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    level = torch.arange(batch, device=device) % 5
    present = torch.ones(batch, len(reader.series), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def train_step():
        with autocast:
            loss = model(x, level, present).float().logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer_step():
        with torch.inference_mode(), autocast:
            model(x, level, present)

    out = {"params_m": params}
    for what, step in (("train", train_step), ("infer", infer_step)):
        step()  # warm-up (allocations, cudnn autotune)
        sync()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        out[f"{what}_levels_per_s"] = batch / float(np.median(times))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("bench_data/small"))
    parser.add_argument("--cache", type=Path, default=Path("bench_data/cache_small"))
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="studies per loader batch; crops per model step")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--models", default="", help="comma-separated; default: every registered grading model")
    parser.add_argument("--view", type=int, default=32, help="views models: view size (px)")
    parser.add_argument("--slices", type=int, default=3, help="views models: slices per view")
    parser.add_argument("--loader-model", default="grading_3d_small", help="the model the loader is compared to")
    parser.add_argument("--skip-loader", action="store_true")
    args = parser.parse_args()

    import torch

    from spine.models import list_models

    models = args.models.split(",") if args.models else list_models("grading_*")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ', no GPU'}")
    if not args.skip_loader:
        ensure_data(args.data, args.cache)
        rate = loader_rate(args.cache, args.crop, args.batch, args.workers, args.batches)
        for device in devices:
            m = model_rates(args.loader_model, args.crop, 5 * args.batch, device, amp=device == "cuda")
            print(f"loader ({args.workers} workers, {args.crop}^3, augmented): {rate['studies_per_s']:.2f} studies/s "
                  f"= {rate['crops_per_s']:.1f} crops/s; {args.loader_model} training on {device}: "
                  f"{m['train_levels_per_s']:.1f} crops/s; loader / model = "
                  f"{rate['crops_per_s'] / m['train_levels_per_s']:.2f} (> 1: the model never waits)")
    print(f"\n{'model':<20}{'device':<7}{'M params':>9}{'train levels/s':>15}{'infer levels/s':>15}"
          f"{'AMP train x':>13}{'AMP infer x':>13}")
    for name in models:
        for device in devices:
            view = (args.slices, args.view)
            fp32 = model_rates(name, args.crop, args.batch, device, amp=False, view=view)
            line = (f"{name:<20}{device:<7}{fp32['params_m']:>9.2f}{fp32['train_levels_per_s']:>15.1f}"
                    f"{fp32['infer_levels_per_s']:>15.1f}")
            if device == "cuda":
                amp = model_rates(name, args.crop, args.batch, device, amp=True, view=view)
                line += (f"{amp['train_levels_per_s'] / fp32['train_levels_per_s']:>13.2f}"
                         f"{amp['infer_levels_per_s'] / fp32['infer_levels_per_s']:>13.2f}")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
