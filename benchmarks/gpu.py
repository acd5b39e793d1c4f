"""The GPU check: one command, at most 8 minutes on one GPU, writing ``gpu.json`` and ``gpu.md`` into ``--out``.

    python benchmarks/gpu.py --out gpu_out                     # every model at its GPU size (docs/gpu.md)
    python benchmarks/gpu.py --out DIR --tiny                  # tiny models and sizes: seconds (the test suite)
    python benchmarks/gpu.py --out DIR --skip compile,torchrun --budget-s 300
    python benchmarks/gpu.py --out DIR --work /tmp/gpu_work    # data/, runs/, submission.csv there, not in DIR

What it measures, in this order (later parts are skipped, and say so, once ``--budget-s`` is spent):
1. models: every registered landmark and grading model (``--tiny``: the ``*_tiny`` ones) at its GPU size (the
   landmark grid and grading views of ``experiment=rsna``, 64^3 crops), training samples/s (studies/s) through
   the engine's own ``train_one_epoch`` (autocast, gradient scaler, clipping, AdamW) and peak GPU memory, in fp32,
   bf16 autocast and fp16 autocast + GradScaler, each with and without channels-last; first at the batch of a
   24 GB card (``experiment=rsna``'s), later at a batch that fills the GPU (sized from the measured memory);
   torch.compile last (it costs a compilation per configuration).
2. loader: the training loader of each stage with ``num_workers`` = available cores on ``realistic``-preset
   studies, against the model's step rate.
3. torchrun: ``torchrun --nproc_per_node=1 -m spine.train`` of each stage for 2 epochs on the tiny preset (NCCL on
   CUDA, gloo on CPU): the DDP path of a multi-GPU run.
4. predict: ``spine-predict`` seconds per study on the realistic preset's test studies, DICOM reading included,
   with the runs of step 3 (or ``--runs``).
5. projection: time per epoch and per 5-fold training on the real 1,975 studies, from 1.-2.
On CPU the same code runs and reports CPU numbers; what needs CUDA (peak memory, the filling batch) is an entry
``skipped: no CUDA``, never a number.
The reports are written after each part (``meta.complete`` false, ``meta.written_after`` the part) and at the
end, so a crash or a compilation that outruns a hard time limit around the command leaves what was measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grading_speed import stage_loader_rate  # noqa: E402
from landmarks import ensure_data  # noqa: E402

log = logging.getLogger("bench.gpu")

PRECISIONS = ("fp32", "bf16", "fp16")
REAL_STUDIES, N_FOLDS = 1975, 5
CARD_24GB = 24.0  # GiB of the smaller card the recipe's batches are sized for
FILL = 0.85  # share of the GPU's memory the filling batch aims at
SECTIONS = ("models", "fill", "compile", "loader", "torchrun", "predict")
SKIP_CUDA = "skipped: no CUDA"
SKIP_BUDGET = "skipped: time budget"


# ------------------------------------------------------------------------------------------------ budget
@dataclass
class Budget:
    """Wall-clock budget: ``spent(share)`` says whether ``share`` of it has passed."""

    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def spent(self, share: float = 1.0) -> bool:
        return self.elapsed() >= share * self.seconds

    def left(self) -> float:
        return max(0.0, self.seconds - self.elapsed())


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------------ models
@dataclass
class ModelSpec:
    """One registered model at its benchmark size: the ``spine-train`` overrides that size it, its batch."""

    name: str
    stage: str
    overrides: list[str]
    args: dict
    batch: int

    def input_text(self, cfg) -> str:
        if self.stage == "landmarks":
            return f"grid {'x'.join(map(str, cfg.stage.grid.size))}"
        from spine.data.inputs import grading_input

        return grading_input(self.name, cfg.stage).describe()


def model_specs(tiny: bool) -> list[ModelSpec]:
    """Every registered landmark and grading model (tiny ones with ``tiny``), sized as described above."""
    from spine.models import list_models, model_inputs
    from spine.train.config import load_config

    names = [n for n in list_models("landmark_*") + list_models("grading_*") if n.endswith("_tiny") == tiny]
    specs = []
    for name in names:
        stage = "landmarks" if name.startswith("landmark") else "grading"
        views = model_inputs(name) == "views"  # sized by the recipe's views, not by a crop size
        if tiny:
            size = (["stage.grid.size=[16,32,32]", "stage.grid.spacing_mm=[10,10,10]"] if stage == "landmarks"
                    else [] if views else ["stage.crop.size=[32,32,32]"])  # 16^3: 1x1 maps, see tests/test_amp.py
            specs.append(ModelSpec(name, stage, [f"stage={stage}", f"model={name}", *size], {}, 2))
            continue
        if stage == "landmarks" or views:  # the recipe's grid / views; its model arguments for its own model
            overrides = [f"stage={stage}", "experiment=rsna"]
            cfg = load_config(overrides)
            args = dict(cfg.model.args) if cfg.model.name == name else {}
            specs.append(ModelSpec(name, stage, overrides, args, cfg.batch_size))
        else:  # crop models: the stage's 64^3 crop, 8 studies (40 crops) per step
            specs.append(ModelSpec(name, stage, ["stage=grading", f"model={name}"], {}, 8))
    return specs


def sample_batch(stage, batch: int, pin: bool) -> dict:
    """A real training batch of ``batch`` studies: a few items of the stage's dataset, tiled."""
    import torch
    from torch.utils.data import default_collate

    train, _, _ = stage.datasets(0)
    items = [train[(0, i)] for i in range(min(4, len(train), batch))]
    collated = default_collate(items)
    index = torch.arange(batch) % len(items)
    out = {}
    for key, value in collated.items():
        if isinstance(value, torch.Tensor):
            value = value[index].contiguous()
            value = value.pin_memory() if pin else value
        out[key] = value
    return out


def build(spec: ModelSpec, stage, device):
    from spine.models import create_model

    return create_model(spec.name, **{**stage.model_kwargs(), **spec.args}).to(device)


def release(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def amp_dtype(precision: str):
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def measure_train(spec: ModelSpec, stage, batch: dict, device, precision: str, channels_last: bool,
                  compiled: bool, steps: int, warmup: int) -> dict:
    """Training samples/s and peak memory of one configuration, through the engine's ``train_one_epoch``."""
    import torch

    from spine.train.engine import param_groups, train_one_epoch, warmup_cosine
    from spine.train.runtime import Runtime, to_channels_last

    torch.manual_seed(0)
    model = build(spec, stage, device)
    rt = Runtime(device, amp_dtype=amp_dtype(precision), channels_last=channels_last)
    if channels_last:
        to_channels_last(model)
    train_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    scheduler = warmup_cosine(optimizer, warmup + steps, 0, 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    kwargs = dict(grad_clip=1.0, progress=False)
    try:
        t0 = time.perf_counter()
        train_one_epoch(train_model, [batch] * warmup, optimizer, scheduler, scaler, stage, rt, **kwargs)
        warmup_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stats = train_one_epoch(train_model, [batch] * steps, optimizer, scheduler, scaler, stage, rt, **kwargs)
        out = {"status": "ok", "samples_per_s": stats["samples_per_s"], "step_s": stats["step_s_per_batch"],
               "loss": stats["loss"], "warmup_s": warmup_s,
               "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
        if not math.isfinite(stats["loss"]):
            out["status"] = "failed: non-finite loss"
        if device.type == "cuda":
            out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        else:
            out["peak_mem_gb"] = None
            out["peak_mem"] = SKIP_CUDA
        if precision == "bf16" and not channels_last and not compiled:  # the inference rate, for the projection
            out["infer_samples_per_s"] = measure_infer(model, stage, batch, rt, steps)
        return out
    except torch.OutOfMemoryError:
        return {"status": "failed: out of memory"}
    except Exception as err:  # noqa: BLE001 - an unsupported combination is a result, not a crash
        return {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    finally:
        del model, train_model, optimizer
        release(device)


def measure_infer(model, stage, batch: dict, rt, steps: int) -> float:
    """Validation samples/s (the engine's ``validate``: autocast, predictions gathered)."""
    from spine.train.engine import validate

    validate(model, [batch], stage, rt)
    t0 = time.perf_counter()
    validate(model, [batch] * steps, stage, rt)
    return steps * stage.batch_size(batch) / (time.perf_counter() - t0)


def fill_batch(record: dict, batch: int, total_gb: float) -> int | None:
    """The batch that fills ``FILL`` of the GPU, from a measured (batch, peak memory) and the parameter memory
    (weights + gradients + AdamW moments, 16 bytes per parameter)."""
    peak = record.get("peak_mem_gb")
    if not peak or record.get("status") != "ok":
        return None
    fixed = record["params_m"] * 1e6 * 16 / 2**30
    per_sample = max((peak - fixed) / batch, 1e-3)
    return max(batch, int((FILL * total_gb - fixed) / per_sample))


def run_models(specs, cache, device, args, budget: Budget, phase: str, results: list, total_gb: float) -> None:
    """One phase of the model grid: ``eager`` (24 GB batch), ``fill`` (filling batch), ``compile``."""
    from spine.cache import Cache
    from spine.train.config import load_config
    from spine.train.stage import build_stage

    cache = Cache.open(cache)
    share = {"eager": 0.35, "fill": 0.9, "compile": 1.0}[phase]
    for spec in specs:
        cfg = load_config([*spec.overrides, f"cache_dir={cache.root}"])
        stage = build_stage(cfg, cache)
        for batch_kind in (("24gb",) if phase == "eager" else ("24gb", "fill") if phase == "compile" else ("fill",)):
            batch = spec.batch
            if batch_kind == "fill":
                ref = _find(results, spec.name, "24gb", "bf16", True, False)
                batch = fill_batch(ref, spec.batch, total_gb) if ref and device.type == "cuda" else None
            data = None
            for precision in PRECISIONS:
                for channels_last in (False, True):
                    compiled = phase == "compile"
                    row = {"model": spec.name, "stage": spec.stage, "input": spec.input_text(cfg),
                           "batch_kind": batch_kind, "batch": batch, "precision": precision,
                           "channels_last": channels_last, "compile": compiled}
                    if batch_kind == "fill" and device.type != "cuda":
                        row["status"] = SKIP_CUDA
                    elif batch is None:
                        row["status"] = "skipped: no 24 GB measurement to size it from"
                    elif compiled and "compile" in args.skip:
                        row["status"] = "skipped: --skip compile"
                    elif budget.spent(share):
                        row["status"] = SKIP_BUDGET
                    else:
                        data = data or sample_batch(stage, batch, pin=device.type == "cuda")
                        row.update(measure_train(spec, stage, data, device, precision, channels_last, compiled,
                                                 args.steps, args.warmup))
                        log.info("%s %s batch %s %s%s%s: %s", spec.name, batch_kind, batch, precision,
                                 " channels-last" if channels_last else "", " compiled" if compiled else "",
                                 _rate_text(row))
                    results.append(row)


def _rate_text(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("status", "")
    mem = f", peak {row['peak_mem_gb']:.2f} GiB" if row.get("peak_mem_gb") is not None else ""
    return f"{row['samples_per_s']:.2f} samples/s{mem}"


def _find(rows: list, model: str, batch_kind: str, precision: str, channels_last: bool, compiled: bool):
    for row in rows:
        if (row["model"], row["batch_kind"], row["precision"], row["channels_last"], row["compile"]) == \
                (model, batch_kind, precision, channels_last, compiled) and row.get("status") == "ok":
            return row
    return None


def primary(rows: list, model: str, device) -> dict | None:
    """The configuration spine-train uses: bf16 + channels-last on CUDA, fp32 on CPU (AMP is CUDA-only)."""
    if device.type == "cuda":
        return _find(rows, model, "24gb", "bf16", True, False) or _find(rows, model, "24gb", "bf16", False, False)
    return _find(rows, model, "24gb", "fp32", False, False)


# ------------------------------------------------------------------------------------------------ loader
def run_loader(stage_overrides: dict, cache: Path, workers: int, budget: Budget, device, batches: int) -> list:
    rows = []
    for stage, (model, overrides, batch) in stage_overrides.items():
        row = {"stage": stage, "model": model, "workers": workers, "batch": batch}
        if budget.spent(0.7):
            rows.append({**row, "status": SKIP_BUDGET})
            continue
        try:
            rate = stage_loader_rate([*overrides, f"cache_dir={cache}"], batch, workers, batches,
                                     pin_memory=device.type == "cuda")
            row.update(status="ok", samples_per_s=rate["studies_per_s"], timed_studies=rate["studies"])
            log.info("loader %s, %d workers: %.2f studies/s", stage, workers, rate["studies_per_s"])
        except Exception as err:  # noqa: BLE001
            row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- torchrun
def torchrun_overrides(tiny: bool) -> dict[str, list[str]]:
    common = ["fold=0", "epochs=2", "progress=false", "tensorboard=false", "overwrite=true"]
    if tiny:
        return {"landmarks": ["stage=landmarks", "model=landmark_25d_tiny", "stage.grid.size=[16,32,32]",
                              "stage.grid.spacing_mm=[10,10,10]", "stage.plot_studies=1", "batch_size=2",
                              "num_workers=0", *common],
                "grading": ["stage=grading", "model=grading_views_tiny", "batch_size=2", "num_workers=0", *common]}
    return {"landmarks": ["stage=landmarks", "experiment=rsna", "batch_size=2", "num_workers=2", *common],
            "grading": ["stage=grading", "experiment=rsna", "batch_size=2", "num_workers=2", *common]}


def run_torchrun(tiny_cache: Path, out: Path, tiny: bool, budget: Budget, skip: set) -> tuple[list, dict]:
    """Each stage under a one-process ``torchrun``; returns rows and {stage: run folder} of those that finished."""
    rows, runs = [], {}
    for stage, overrides in torchrun_overrides(tiny).items():
        run_dir = out / "runs" / stage
        row = {"stage": stage, "epochs": 2}
        if "torchrun" in skip:
            rows.append({**row, "status": "skipped: --skip torchrun"})
            continue
        if budget.spent(0.7):
            rows.append({**row, "status": SKIP_BUDGET})
            continue
        extra = [f"landmarks={runs['landmarks']}"] if stage == "grading" and "landmarks" in runs else []
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
               "spine.train", *overrides, *extra, f"cache_dir={tiny_cache}", f"run_dir={run_dir}"]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30.0, budget.left()))
            rc, tail = done.returncode, (done.stdout + done.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            rc, tail = 124, "timed out"
        row.update(seconds=time.perf_counter() - t0, rc=rc)
        run_json = run_dir / "fold0" / "run.json"
        if rc == 0 and run_json.is_file():
            info = json.loads(run_json.read_text())
            row.update(status="ok", world_size=info["world_size"], backend=info.get("backend"),
                       device=info["device"], amp=info["amp"])
            runs[stage] = run_dir
        else:
            row.update(status=f"failed: rc {rc}", log_tail=tail)
        log.info("torchrun %s: %s in %.1f s", stage, row["status"], row["seconds"])
        rows.append(row)
    return rows, runs


# ----------------------------------------------------------------------------------------------- predict
def run_predict(data: Path, runs: list[Path], out: Path, device, budget: Budget) -> dict:
    from spine.cli import compose
    from spine.predict.config import PredictConfig
    from spine.predict.run import predict

    if len(runs) < 2:
        return {"status": "skipped: no landmark and grading runs (torchrun skipped or failed, no --runs)"}
    if budget.spent(0.8):
        return {"status": SKIP_BUDGET}
    workers = max(0, min(cores() - 1, 8))
    cfg = compose("predict", [f"data_dir={data}", f"runs=[{','.join(map(str, runs))}]",
                              f"out={out / 'submission.csv'}", f"device={device.type}", f"workers={workers}",
                              "progress=false"], PredictConfig)
    try:
        summary = predict(cfg)
    except Exception as err:  # noqa: BLE001
        return {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    keys = ("studies", "seconds_per_study", "setup_seconds", "seconds", "projected_hours")
    row = {"status": "ok", "workers": workers, "device": device.type, **{k: summary.get(k) for k in keys}}
    log.info("predict: %.2f s/study after %.1f s of setup", row["seconds_per_study"], row["setup_seconds"])
    return row


# -------------------------------------------------------------------------------------------- projection
def projection(stage_models: dict, model_rows: list, loader_rows: list, device) -> list:
    """Time per epoch and per 5-fold training of the recipe on the real 1,975 studies."""
    from spine.train.config import load_config

    rows = []
    n_val = REAL_STUDIES // N_FOLDS
    n_train = REAL_STUDIES - n_val
    for stage, model in stage_models.items():
        epochs = load_config([f"stage={stage}", "experiment=rsna"]).epochs
        rec = primary(model_rows, model, device)
        bf16 = _find(model_rows, model, "24gb", "bf16", False, False)
        loader = next((r for r in loader_rows if r["stage"] == stage and r.get("status") == "ok"), None)
        row = {"stage": stage, "model": model, "epochs": epochs, "n_train": n_train, "n_val": n_val}
        if rec is None or loader is None:
            rows.append({**row, "status": "skipped: no model or loader measurement"})
            continue
        train_rate = min(rec["samples_per_s"], loader["samples_per_s"])
        infer = (bf16 or {}).get("infer_samples_per_s") or 3 * rec["samples_per_s"]
        epoch_s = n_train / train_rate + n_val / min(infer, loader["samples_per_s"])
        rows.append({**row, "status": "ok", "bound": "loader" if loader["samples_per_s"] < rec["samples_per_s"]
                     else "model", "samples_per_s": train_rate, "epoch_s": epoch_s,
                     "fold_h": epochs * epoch_s / 3600, "five_fold_h": N_FOLDS * epochs * epoch_s / 3600})
    return rows


def targets(model_rows: list, loader_rows: list, pred: dict, stage_models: dict, device) -> list:
    """The issue's targets: bf16 >= 2x fp32 (grading models), loader >= 1.5x the step rate, <= 10 s per study."""
    rows = []
    cuda = device.type == "cuda"
    for model in sorted({r["model"] for r in model_rows if r["stage"] == "grading"}):
        fp32 = _find(model_rows, model, "24gb", "fp32", False, False)
        bf16 = _find(model_rows, model, "24gb", "bf16", False, False)
        ratio = bf16["samples_per_s"] / fp32["samples_per_s"] if fp32 and bf16 else None
        rows.append({"target": f"{model}: bf16 >= 2x fp32 samples/s", "value": ratio,
                     "met": (ratio >= 2.0) if cuda and ratio is not None else None,
                     "status": "ok" if cuda and ratio is not None else SKIP_CUDA if not cuda else "not measured"})
    for loader in loader_rows:
        rec = primary(model_rows, stage_models[loader["stage"]], device)
        ratio = loader["samples_per_s"] / rec["samples_per_s"] if rec and loader.get("status") == "ok" else None
        rows.append({"target": f"{loader['stage']} loader >= 1.5x the model's step rate", "value": ratio,
                     "met": ratio >= 1.5 if ratio is not None else None,
                     "status": "ok" if ratio is not None else "not measured"})
    sps = pred.get("seconds_per_study")
    rows.append({"target": "spine-predict <= 10 s per study", "value": sps,
                 "met": sps <= 10.0 if sps is not None else None, "status": "ok" if sps is not None else "not measured"})
    return rows


# ----------------------------------------------------------------------------------------------- outputs
def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows: list, columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key)) for key, _ in columns) + " |")
    return lines + [""]


def markdown(report: dict) -> str:
    meta = report["meta"]
    partial = "" if meta.get("complete", True) else \
        f" (written after the {meta.get('written_after')} part: the run did not finish)"
    lines = [f"# benchmarks/gpu.py on {meta['device_name']}", "",
             f"torch {meta['torch']}, CUDA {meta['cuda'] or '-'}, {meta['cores']} cores, "
             f"{'tiny mode, ' if meta['tiny'] else ''}{meta['elapsed_s']:.0f} s of {meta['budget_s']:.0f} s budget"
             f"{partial}.",
             "", "## Training step (samples = studies; engine's train_one_epoch)", ""]
    lines += _table(report["models"], [("model", "model"), ("input", "input"), ("batch_kind", "batch for"),
                                       ("batch", "batch"), ("precision", "precision"), ("channels_last", "CL"),
                                       ("compile", "compile"), ("samples_per_s", "samples/s"),
                                       ("peak_mem_gb", "peak GiB"), ("status", "status")])
    lines += ["## Loader (training items, workers = available cores)", ""]
    lines += _table(report["loader"], [("stage", "stage"), ("workers", "workers"), ("batch", "batch"),
                                       ("samples_per_s", "samples/s"), ("status", "status")])
    lines += ["## torchrun, one process, 2 epochs, tiny preset", ""]
    lines += _table(report["torchrun"], [("stage", "stage"), ("seconds", "seconds"), ("world_size", "world"),
                                         ("backend", "backend"), ("device", "device"), ("amp", "amp"),
                                         ("status", "status")])
    lines += ["## spine-predict (DICOM reading included)", ""]
    lines += _table([report["predict"]], [("studies", "studies"), ("workers", "workers"),
                                          ("seconds_per_study", "s/study"), ("setup_seconds", "setup s"),
                                          ("status", "status")])
    lines += [f"## Projection: {REAL_STUDIES} studies, {N_FOLDS} folds, experiment=rsna epochs", ""]
    lines += _table(report["projection"], [("stage", "stage"), ("model", "model"), ("epochs", "epochs"),
                                           ("samples_per_s", "samples/s"), ("bound", "bound by"),
                                           ("epoch_s", "s/epoch"), ("fold_h", "h/fold"),
                                           ("five_fold_h", "h/5 folds"), ("status", "status")])
    lines += ["## Targets", ""]
    lines += _table(report["targets"], [("target", "target"), ("value", "value"), ("met", "met"),
                                        ("status", "status")])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument("--work", type=Path, help="folder for data/, runs/ and submission.csv (default: --out); "
                        "keeps --out to the two reports, e.g. on the lent device (docs/gpu.md)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (seconds): the test suite")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda[:N]")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget; later parts are skipped")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(SECTIONS)}")
    parser.add_argument("--models", default="", help="comma-separated model names (default: every one of the mode)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, cudnn, compile)")
    parser.add_argument("--loader-batches", type=int, default=6)
    parser.add_argument("--data", type=Path, help="realistic-preset dataset (default: made in --work/data)")
    parser.add_argument("--cache", type=Path, help="its preprocessing cache (default: --work/data)")
    parser.add_argument("--tiny-data", type=Path, help="tiny-preset dataset for torchrun (default: made in --work)")
    parser.add_argument("--tiny-cache", type=Path, help="its cache, with 2 folds")
    parser.add_argument("--runs", nargs=2, type=Path, metavar=("LANDMARKS", "GRADING"),
                        help="runs for spine-predict instead of the torchrun ones")
    parser.add_argument("--studies", type=int, nargs=2, default=(12, 8), metavar=("TRAIN", "TEST"),
                        help="realistic studies to generate (train for the loader, test for spine-predict)")
    args = parser.parse_args(argv)
    args.work = args.work or args.out
    args.skip = {s for s in args.skip.split(",") if s}
    unknown = args.skip - set(SECTIONS)
    if unknown:
        parser.error(f"--skip: unknown {sorted(unknown)}; parts: {', '.join(SECTIONS)}")
    return args


def prepare_data(args) -> tuple[Path, Path, Path, Path]:
    """(realistic data, its cache, tiny data, its 2-fold cache); --tiny uses the tiny preset for both."""
    work = args.work / "data"
    tiny_data = args.tiny_data or work / "tiny"
    tiny_cache = args.tiny_cache or work / "tiny_cache"
    ensure_data(tiny_data, tiny_cache, "tiny", preprocess=("n_folds=2", f"workers={min(cores(), 8)}"))
    if args.tiny:
        return args.data or tiny_data, args.cache or tiny_cache, tiny_data, tiny_cache
    data, cache = args.data or work / "realistic", args.cache or work / "realistic_cache"
    n_train, n_test = args.studies
    ensure_data(data, cache, "realistic", synth=(f"n_train={n_train}", f"n_test={n_test}"),
                preprocess=(f"workers={min(cores(), 16)}", "n_folds=2"))
    return data, cache, tiny_data, tiny_cache


def device_info(device) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cores": cores(),
            "device": str(device), "device_name": platform.processor() or platform.machine(), "gpu_mem_gb": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, gpu_mem_gb=props.total_memory / 2**30,
                    bf16=torch.cuda.is_bf16_supported())
    return info


def write_report(out: Path, meta, models, loader, torchrun, pred, stage_models, device, budget: Budget,
                 after: str) -> None:
    """``gpu.json`` and ``gpu.md``, with what was measured up to the part ``after`` (``all``: the end)."""
    meta.update(elapsed_s=budget.elapsed(), complete=after == "all", written_after=after)
    report = {"meta": meta, "models": models, "loader": loader, "torchrun": torchrun, "predict": pred}
    report["projection"] = projection(stage_models, models, loader, device)
    report["targets"] = targets(models, loader, pred, stage_models, device)
    (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu.md").write_text(markdown(report))
    log.info("wrote %s and %s in %.0f s%s", out / "gpu.json", out / "gpu.md", meta["elapsed_s"],
             "" if after == "all" else f" (after the {after} part; written again after the next)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[gpu] %(message)s")
    import torch

    from spine.train.config import load_config

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    meta = {**device_info(device), "tiny": args.tiny, "budget_s": args.budget_s, "skip": sorted(args.skip)}
    if device.type != "cuda":
        log.info("no CUDA: CPU numbers; peak memory and the filling batch are '%s'", SKIP_CUDA)
    data, cache, tiny_data, tiny_cache = prepare_data(args)
    meta["prepare_s"] = budget.elapsed()
    total_gb = meta["gpu_mem_gb"] or 0.0

    # the model each stage trains in the recipe (tiny: the tiny model torchrun trains): always measured
    runs_cfg = torchrun_overrides(args.tiny)
    stage_models = {stage: load_config(overrides).model.name for stage, overrides in runs_cfg.items()}
    specs = model_specs(args.tiny)
    if args.models:
        wanted = set(args.models.split(","))
        specs = [s for s in specs if s.name in wanted or s.name in stage_models.values()]
    models: list = []
    loader: list = []
    torchrun: list = []
    pred: dict = {"status": "not reached"}

    def save(after: str) -> None:  # after each part: a crash or a hard timeout later leaves what was measured
        write_report(args.out, meta, models, loader, torchrun, pred, stage_models, device, budget, after)

    if "models" not in args.skip:
        run_models(specs, tiny_cache, device, args, budget, "eager", models, total_gb)
        save("models")
    loader_specs = {stage: (model, [o for o in runs_cfg[stage] if o.startswith(("stage", "experiment", "model"))],
                            next(s.batch for s in specs if s.name == model) if any(s.name == model for s in specs)
                            else 8) for stage, model in stage_models.items()}
    if "loader" not in args.skip:
        loader = run_loader(loader_specs, cache, cores(), budget, device, args.loader_batches)
        save("loader")
    torchrun, runs = run_torchrun(tiny_cache, args.work, args.tiny, budget, args.skip)
    save("torchrun")
    run_list = list(args.runs) if args.runs else [runs[s] for s in ("landmarks", "grading") if s in runs]
    pred = {"status": "skipped: --skip predict"} if "predict" in args.skip else \
        run_predict(data, run_list, args.work, device, budget)
    save("predict")
    if "fill" not in args.skip and "models" not in args.skip:
        run_models(specs, tiny_cache, device, args, budget, "fill", models, total_gb)
        save("fill")
    if "models" not in args.skip:
        run_models(specs, tiny_cache, device, args, budget, "compile", models, total_gb)
    save("all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
