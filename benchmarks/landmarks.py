"""Landmark benchmark: train the landmark stage on the `small` synthetic preset (CPU, a few minutes).

    .venv/bin/python benchmarks/landmarks.py [--data DIR] [--cache DIR] [--run DIR] [--fold 0|all] [override ...]

Makes the dataset (``spine.synth`` preset=small seed=0) and the cache (``spine.preprocess``) if they are
missing, times the data loader against the model step in isolation, trains ``experiment=bench_cpu``
(overrides go to spine-train), and reports:
- error in mm per level (median, 90th percentile), level-identification accuracy, share within 5 / 10 mm,
  and the ratio of the median error to a baseline that puts every point at its mean offset from the
  volume centre (training studies);
- training throughput (samples/s) and loader vs step time per batch;
- the targets: level-ID accuracy >= 99 %, median error < two grid voxels.
Writes ``<run>/benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def ensure_data(data: Path, cache: Path, preset: str = "small", synth: tuple[str, ...] = (),
                preprocess: tuple[str, ...] = ()) -> None:
    """Generate the synthetic ``preset`` into ``data`` and preprocess it into ``cache``, each only if missing.
    ``synth`` / ``preprocess``: extra overrides (e.g. ``n_train=16``, ``workers=8``)."""
    from spine.cli import compose

    if not (data / "train.csv").is_file():
        from spine.synth.config import SynthConfig
        from spine.synth.generate import generate

        print(f"[bench] generating the {preset} synthetic preset into {data}", flush=True)
        generate(compose("synth", [f"preset={preset}", "seed=0", f"out_dir={data}", *synth], SynthConfig))
    if not any(cache.glob("*/series.csv")):
        from spine.preprocess.config import PreprocessConfig
        from spine.preprocess.run import run

        print(f"[bench] preprocessing into {cache}", flush=True)
        run(compose("preprocess", [f"data_dir={data}", f"cache_dir={cache}", "split=all", "progress=false",
                                   *preprocess], PreprocessConfig))


def time_loader_and_step(cfg, n_batches: int = 6) -> dict:
    """Seconds per batch of the data pipeline alone (one process) and of one optimizer step alone."""
    import torch

    from spine.cache import Cache
    from spine.models import create_model
    from spine.train.landmarks import LandmarkStage

    stage = LandmarkStage(cfg, Cache.open(cfg.cache_dir))
    train, _, _ = stage.datasets(0 if cfg.fold == "all" else int(cfg.fold))
    bs = cfg.batch_size
    keys = [(0, i % len(train)) for i in range(bs * (n_batches + 1))]
    for key in keys[: len(train)]:
        train[key]  # warm the in-memory volume cache, as after the first epoch
    started = time.perf_counter()
    items = [train[key] for key in keys[bs:]]
    loader_s = (time.perf_counter() - started) / n_batches
    batch = {k: torch.stack([it[k] for it in items[:bs]]) for k in items[0]}
    model = create_model(cfg.model.name, **stage.model_kwargs(), **cfg.model.args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for _ in range(n_batches):
        t0 = time.perf_counter()
        loss, _ = stage.loss(model(batch["image"]), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return {"loader_s_per_batch": loader_s, "step_s_per_batch": float(np.median(times[1:])),
            "batch_size": bs, "threads": torch.get_num_threads()}


def centre_baseline(cache, oof: pd.DataFrame, series: str) -> pd.DataFrame:
    """Every point at its mean offset (training studies of each fold) from the volume centre."""
    def centre(study: int) -> np.ndarray:
        ids = cache.series_of(study, series)
        return cache.load_volume(study, ids[0]).centre  # LPS mm, middle of the series' voxel centres

    coords = cache.coordinates.groupby(["study_id", "condition", "level"], as_index=False)[
        ["world_x", "world_y", "world_z"]].mean()
    coords = coords[coords.study_id.map(lambda s: bool(cache.series_of(s, series)))]
    centres = {int(s): centre(int(s)) for s in coords.study_id.unique()}
    xyz = coords[["world_x", "world_y", "world_z"]].to_numpy()
    offsets = xyz - np.stack([centres[int(s)] for s in coords.study_id])
    coords = coords.assign(dx=offsets[:, 0], dy=offsets[:, 1], dz=offsets[:, 2])
    folds = cache.folds.set_index("study_id").fold
    rows = []
    for fold in sorted(oof.fold.unique()):
        val = set(oof[oof.fold == fold].study_id)
        mean = coords[~coords.study_id.isin(val) & coords.study_id.isin(folds.index)].groupby(
            ["condition", "level"])[["dx", "dy", "dz"]].mean()
        for study in val:
            if study not in centres:
                continue
            for (condition, level), d in mean.iterrows():
                c = centres[study] + d.to_numpy()
                rows.append({"study_id": study, "condition": condition, "level": level,
                             "world_x": c[0], "world_y": c[1], "world_z": c[2]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth_small")
    parser.add_argument("--cache", default="cache/synth_small")
    parser.add_argument("--run", default="runs/bench_landmarks")
    parser.add_argument("--fold", default="0")
    parser.add_argument("overrides", nargs="*", help="spine-train overrides, e.g. epochs=10")
    args = parser.parse_args(argv)
    data, cache_dir, run_dir = Path(args.data), Path(args.cache), Path(args.run)
    ensure_data(data, cache_dir)

    from spine.cache import Cache
    from spine.evaluate import landmark_metrics, truth_frame
    from spine.train.config import load_config
    from spine.train.run import run

    cfg = load_config(["experiment=bench_cpu", f"cache_dir={cache_dir}", f"run_dir={run_dir}", f"fold={args.fold}",
                       "overwrite=true", *args.overrides])
    timing = time_loader_and_step(cfg)
    print(f"[bench] isolated, batch {timing['batch_size']}: loader {timing['loader_s_per_batch']:.3f} s/batch "
          f"(one process) vs model step {timing['step_s_per_batch']:.3f} s/batch "
          f"({timing['threads']} threads)", flush=True)
    started = time.perf_counter()
    summary = run(cfg)
    train_s = time.perf_counter() - started

    cache = Cache.open(cache_dir)
    oof = pd.read_csv(run_dir / "oof.csv")
    metrics = summary["oof"]
    baseline = landmark_metrics(centre_baseline(cache, oof, cfg.stage.series[0]), truth_frame(cache.coordinates))
    epochs = pd.concat([pd.read_csv(f / "metrics.csv") for f in sorted(run_dir.glob("fold*"))])
    steady = epochs[epochs.epoch > 0] if (epochs.epoch > 0).any() else epochs
    voxel = max(cfg.stage.grid.spacing_mm)
    report = {
        "train_seconds": train_s, "folds": sorted(int(f) for f in oof.fold.unique()),
        "metrics": metrics, "baseline_centre_offset": baseline,
        "samples_per_s": float(steady["train/samples_per_s"].median()),
        "loop_data_s_per_batch": float(steady["train/data_s_per_batch"].median()),
        "loop_step_s_per_batch": float(steady["train/step_s_per_batch"].median()),
        "isolated": timing, "grid_voxel_mm": voxel,
        "targets": {"level_acc>=0.99": metrics["level_acc"] >= 0.99,
                    f"median<{2 * voxel:g}mm": metrics["median_mm"] < 2 * voxel},
    }
    (run_dir / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n[bench] landmarks, {cfg.model.name}, {len(report['folds'])} fold(s), {train_s:.0f} s of training")
    print(f"  error (mm)        median {metrics['median_mm']:.2f}  p90 {metrics['p90_mm']:.2f}  "
          f"within 5 mm {metrics['within_5mm']:.1%}  within 10 mm {metrics['within_10mm']:.1%}")
    print(f"  level-ID accuracy {metrics['level_acc']:.1%}")
    print("  per level         " + "  ".join(f"{lv} {metrics[f'median_mm/{lv}']:.1f}/{metrics[f'p90_mm/{lv}']:.1f}"
                                            for lv in ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")) + "  (median/p90)")
    print("  per group         " + "  ".join(f"{g} {metrics[f'median_mm/{g}']:.2f}"
                                            for g in ("spinal", "foraminal", "subarticular")))
    print(f"  vs baseline       median {baseline['median_mm']:.1f} mm, level-ID {baseline['level_acc']:.1%} "
          f"(mean offset from the volume centre): error ratio {metrics['median_mm'] / baseline['median_mm']:.3f}")
    print(f"  throughput        {report['samples_per_s']:.1f} samples/s (median epoch); in the loop the step "
          f"waits {report['loop_data_s_per_batch']:.3f} s/batch for data vs {report['loop_step_s_per_batch']:.3f} s "
          f"step; isolated: loader {timing['loader_s_per_batch']:.3f} vs step {timing['step_s_per_batch']:.3f} s/batch")
    print("  targets           " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in report["targets"].items()))
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
