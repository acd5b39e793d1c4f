"""Can it learn: the configured model must memorise a handful of studies.

The first thing to try when "the model refuses to train": ``learn_studies`` studies (unaugmented, so every
step sees the same inputs), batches of the run's ``batch_size`` cycling over them, ``learn_steps`` AdamW steps
(no weight decay, warmup then cosine decay from ``learn_lr`` or the run's ``optim.lr``). A model, loss and
data that fit together drive the training loss of those studies close to zero; one that cannot even do this
has a bug between its inputs and its targets (labels on the wrong studies or sides, targets outside the
input, a loss on the wrong axis, a learning rate far off) that more data and epochs will not fix.

The measure: the landmark stage's mean point error in mm (``dist_mm``; its heatmap cross-entropy has a floor
above zero), the grading stage's loss. Its mean over the last tenth of the steps against the first pass over
the studies: at most ``learn_max_ratio`` passes, at most ``learn_warn_ratio`` warns, more fails.

The training config (stage, model, optimiser, batch size, device) is that of ``run=<run folder>``, else the
default config of ``stage`` with the ``train`` overrides: :func:`train_config`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from spine.cli import ConfigError
from spine.doctor.registry import check
from spine.doctor.result import FAIL, PASS, WARN, CheckResult
from spine.run_folder import OOF_CSV


# ----------------------------------------------------------------------------------- the training config
def train_config(cfg, cache_root) -> object:
    """The `spine.run_config.TrainConfig` the learn and throughput checks use: ``cfg.run``'s config.yaml with
    the ``cfg.train`` overrides set on it (values only: ``stage.crop.size=[16,16,16]``), else spine-train's
    default config of ``cfg.stage`` composed with them (group choices too: ``model=grading_3d_tiny``); with the
    cache at ``cache_root`` and the doctor's device.

    Raises ConfigError (a bad override) or FileNotFoundError (no run folder)."""
    if cfg.run:
        from spine.run_folder import load_run_config

        tc = load_run_config(cfg.run)
        for item in cfg.train:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"train override {item!r} is not of the form key=value")
            _set_path(tc, key.strip(), yaml.safe_load(value) if value.strip() else "")
    else:
        from spine.train.config import load_config

        tc = load_config([f"stage={cfg.stage}", *cfg.train])
    tc.cache_dir = str(cache_root)
    tc.device = cfg.device
    if tc.landmarks and not (Path(tc.landmarks) / OOF_CSV).is_file():
        tc.landmarks = ""  # a run moved without its landmark run: the doctor's items sit at the label points anyway
    return tc


def _set_path(obj, dotted: str, value) -> None:
    """Set ``a.b.c`` on nested dataclasses (and dicts); an unknown key is a ConfigError."""
    parts = dotted.split(".")
    for part in parts[:-1]:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"train override {dotted}: no key {part!r} in the run's config")
    last = parts[-1]
    if isinstance(obj, dict):
        obj[last] = value
    elif hasattr(obj, last):
        setattr(obj, last, value)
    else:
        raise ConfigError(f"train override {dotted}: no key {last!r} in the run's config")


def build_stage(tc, cache):
    """The stage of ``tc`` on ``cache``, its model arguments checked (as spine-train does before training)."""
    from spine.train.run import check_model
    from spine.train.stage import build_stage as build

    stage = build(tc, cache)
    check_model(tc, stage)
    return stage


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.ERROR):
    """Silence the named loggers below ``level`` for a while (the stages' notes on validation inputs, which
    the doctor's training does not use)."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)


def stage_datasets(stage, fold: int):
    """``stage.datasets(fold)`` without the stages' warnings about validation and test inputs."""
    with quiet("spine.train", "spine.data"):
        return stage.datasets(fold)


def build_model(tc, stage, device):
    from spine.models import create_model

    return create_model(tc.model.name, weights=tc.model.weights, **stage.model_kwargs(), **tc.model.args).to(device)


# -------------------------------------------------------------------------------------------- pure parts
def key_metric(parts: dict) -> str:
    """What must go to zero: the point error in mm where the loss reports one (landmarks), else the loss."""
    return "dist_mm" if "dist_mm" in parts else "loss"


def overfit(model, stage, batches: list[dict], steps: int, lr: float, rt, *, betas=(0.9, 0.999),
            grad_clip: float = 0.0, time_limit_s: float = float("inf")) -> dict:
    """Train ``model`` on ``batches`` (cycled) for ``steps`` steps; returns ``curve`` (per step: ``loss`` and the
    loss parts), ``key`` (:func:`key_metric`), ``steps_done``, ``seconds``, ``stopped`` (the time limit hit)."""
    import torch

    from spine.train.engine import param_groups, train_step, warmup_cosine

    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=lr, betas=tuple(betas))
    scheduler = warmup_cosine(optimizer, steps, max(1, steps // 10), 0.01)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    model.train()
    curve, key, started, stopped = [], "loss", time.perf_counter(), False
    for step in range(steps):
        batch = rt.to_device(batches[step % len(batches)])
        loss, parts = train_step(model, batch, optimizer, scheduler, scaler, stage, rt, grad_clip)
        row = {"step": step, "loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        curve.append(row)
        key = key_metric(row)
        if time.perf_counter() - started > time_limit_s and step + 1 < steps:
            stopped = True
            break
    return {"curve": curve, "key": key, "steps_done": len(curve), "seconds": time.perf_counter() - started,
            "stopped": stopped}


def judge_learning(curve: list[dict], key: str, n_batches: int, max_ratio: float, warn_ratio: float) -> dict:
    """``status``, ``initial`` (mean of ``key`` over the first pass over the batches), ``final`` (mean over the
    last tenth of the steps, at least one pass), ``ratio`` = final / initial."""
    values = np.array([row.get(key, np.nan) for row in curve], dtype=np.float64)
    if not values.size or not np.isfinite(values).any():
        return {"status": FAIL, "initial": float("nan"), "final": float("nan"), "ratio": float("nan")}
    first = max(1, n_batches)
    last = max(first, len(values) // 10)
    initial = float(np.nanmean(values[:first]))
    final = float(np.nanmean(values[-last:]))
    ratio = final / initial if initial > 0 else (0.0 if final <= 0 else float("inf"))
    if not np.isfinite(final):
        status = FAIL
    elif ratio <= max_ratio:
        status = PASS
    elif ratio <= warn_ratio:
        status = WARN
    else:
        status = FAIL
    return {"status": status, "initial": initial, "final": final, "ratio": float(ratio)}


# --------------------------------------------------------------------------------------------- the check
@check("learn", order=70, help=(
    "the configured model memorises 8 studies: its training loss must go close to zero"))
def check_learn(ctx) -> CheckResult:
    from torch.utils.data import default_collate

    from spine.train.runtime import seed_everything, setup_runtime, teardown

    cfg, cache = ctx.cfg, ctx.cache
    tc = copy.deepcopy(train_config(cfg, cache.root))
    tc.stage.augment.enabled = False  # the same inputs at every step: memorisation, nothing else
    stage = build_stage(tc, cache)
    fold = stage.folds()[0]
    train, val, _ = stage_datasets(stage, fold)
    pool = [(train, i) for i in range(len(train))] + [(val, i) for i in range(len(val))]
    if not pool:
        return CheckResult("learn", FAIL, f"no training studies for stage {tc.stage.name}")
    rng = ctx.rng(4)
    chosen = sorted(rng.choice(len(pool), size=min(cfg.learn_studies, len(pool)), replace=False).tolist())
    items, notes = [], []
    for n in chosen:
        dataset, index = pool[n]
        try:
            items.append(dataset[index])
        except Exception as err:  # noqa: BLE001 - one bad study is reported, never the end of the check
            notes.append(f"study {dataset.study_ids[index]}: not loadable: {type(err).__name__}: {err}")
    if not items:
        return CheckResult("learn", FAIL, "none of the chosen studies could be loaded", notes, {"notes": notes})
    size = max(1, min(tc.batch_size, len(items)))
    batches = [default_collate(items[i:i + size]) for i in range(0, len(items), size)]
    rt = setup_runtime(tc.device, tc.amp, False)
    try:
        seed_everything(tc.seed)
        model = build_model(tc, stage, rt.device)
        lr = cfg.learn_lr or tc.optim.lr
        result = overfit(model, stage, batches, cfg.learn_steps, lr, rt, betas=tc.optim.betas,
                         grad_clip=tc.optim.grad_clip, time_limit_s=cfg.learn_time_limit_s)
    finally:
        teardown(rt)
    verdict = judge_learning(result["curve"], result["key"], len(batches), cfg.learn_max_ratio, cfg.learn_warn_ratio)
    what = "point error (mm)" if result["key"] == "dist_mm" else "loss"
    summary = (f"{tc.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
               f"{rt.device}) memorising {len(items)} studies ({tc.stage.name}): training {what} "
               f"{verdict['initial']:.4g} -> "
               f"{verdict['final']:.4g} (x{verdict['ratio']:.3f}; pass <= x{cfg.learn_max_ratio:g}) in "
               f"{result['steps_done']} steps, {result['seconds']:.0f} s")
    if result["stopped"]:
        summary += f" (stopped at learn_time_limit_s={cfg.learn_time_limit_s:g})"
    details = list(notes)
    if verdict["status"] != PASS:
        details.append("the model cannot memorise a few studies: look for a mismatch between inputs and targets "
                       "(label points on their images, left/right), the learning rate (learn_lr), or the loss")
    figures = []
    try:
        figures.append(str(_plot_curve(result["curve"], result["key"], ctx.out / "learn_curve.png",
                                       f"{tc.model.name}: {len(items)} studies")))
    except Exception as err:  # noqa: BLE001
        details.append(f"figure failed: {type(err).__name__}: {err}")
    every = max(1, len(result["curve"]) // 100)
    numbers = {**verdict, "key": result["key"], "model": tc.model.name, "stage": tc.stage.name, "lr": lr,
               "studies": [int(pool[n][0].study_ids[pool[n][1]]) for n in chosen], "batch_size": size,
               "steps": result["steps_done"], "seconds": result["seconds"], "device": str(rt.device),
               "stopped": result["stopped"], "curve": result["curve"][::every] + result["curve"][-1:]}
    return CheckResult("learn", verdict["status"], summary, details, numbers, figures)


def _plot_curve(curve: list[dict], key: str, path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in curve]
    keys = ["loss"] + ([key] if key != "loss" else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
    for ax, name in zip(axes[0], keys):
        ax.plot(steps, [row[name] for row in curve])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
