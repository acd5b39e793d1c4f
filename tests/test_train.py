"""The training engine: config errors, loss goes down, resume reproduces a run, DDP on 2 CPU processes,
the run folder, and the ``spine-train`` console script."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from spine.train.__main__ import main

TINY = ["model=landmark_25d_tiny", "stage.grid.size=[8,32,32]", "stage.grid.spacing_mm=[10,10,10]",
        "stage.plot_studies=1", "batch_size=2", "num_workers=0", "progress=false", "tensorboard=false", "epochs=2"]


@pytest.fixture(scope="module")
def cache_dir(tiny_cache_dir) -> Path:
    return tiny_cache_dir


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_config_errors_are_one_clear_line(cache_dir, capsys):
    cases = [(["epochz=3"], "epochz"), (["model=nope"], "landmark_25d_tiny"), (["fold=x"], "fold"),
             (["stage.grid.sise=[1,2,3]"], "stage.grid.sise"), (["amp=fp8"], "amp"),
             ([*TINY, f"cache_dir={cache_dir}", "model.args.widht=3"], "widht"),
             ([*TINY, f"cache_dir={cache_dir}", "model.name=landmark_2d"], "unknown model"),
             ([*TINY, f"cache_dir={cache_dir}", "fold=7"], "fold 7 has no studies")]
    for overrides, expected in cases:
        assert main(overrides) == 2, overrides
        err = capsys.readouterr().err.strip()
        assert "config error:" in err and expected in err and len(err.splitlines()) == 1, err
    assert main([*TINY, f"cache_dir={cache_dir / 'nothing'}"]) == 1  # no cache: the run cannot start
    assert "no preprocessing cache" in capsys.readouterr().err


def test_a_few_steps_decrease_the_loss(cache_dir):
    from spine.cache import Cache
    from spine.models import create_model
    from spine.train.config import load_config
    from spine.train.engine import EpochSampler, train_one_epoch, warmup_cosine
    from spine.train.landmarks import LandmarkStage
    from spine.train.runtime import setup_runtime

    cfg = load_config([*TINY, "stage.augment.enabled=false"])
    stage = LandmarkStage(cfg, Cache.open(cache_dir))
    train, _, _ = stage.datasets(0)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **stage.model_kwargs())
    batch = {k: torch.stack([train[i][k] for i in range(len(train))]) for k in train[0]}

    def loss_now() -> float:
        model.train()  # batch statistics, as in the steps
        with torch.no_grad():
            return float(stage.loss(model(batch["image"]), batch)[0])

    before = loss_now()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = warmup_cosine(optimizer, 8, 0, 1.0)
    loader = torch.utils.data.DataLoader(train, batch_size=2, sampler=EpochSampler(range(len(train))))
    rt = setup_runtime("cpu")
    stats = {}
    for _ in range(8):
        stats = train_one_epoch(model, loader, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                                stage, rt, grad_clip=1.0, progress=False)
    assert loss_now() < 0.9 * before
    assert {"loss", "ce", "samples_per_s", "data_s_per_batch", "step_s_per_batch"} <= set(stats)


class _Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_same_state(cache_dir, tmp_path, monkeypatch):
    from spine.train import checkpoint

    common = [*TINY, f"cache_dir={cache_dir}", "fold=1", "epochs=3", "ema=0.9", "val_every=2"]
    assert main([*common, f"run_dir={tmp_path / 'straight'}"]) == 0

    save = checkpoint.save_checkpoint

    def save_then_die(folder, epoch, *args):
        save(folder, epoch, *args)
        if epoch == 1:
            raise _Killed  # killed right after the checkpoint of the second epoch

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        main([*common, f"run_dir={tmp_path / 'killed'}"])
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    assert main([*common, f"run_dir={tmp_path / 'killed'}"]) == 1  # refuses to overwrite a started run
    assert main([*common, f"run_dir={tmp_path / 'killed'}", "resume=true"]) == 0

    a, b = tmp_path / "straight" / "fold1", tmp_path / "killed" / "fold1"
    for name in ("model.safetensors", "last.e0002.safetensors", "last_ema.e0002.safetensors"):
        wa, wb = _weights(a / name), _weights(b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    assert list(ma.epoch) == list(mb.epoch) == [0, 1, 2]
    pd.testing.assert_series_equal(ma["train/loss"], mb["train/loss"])
    pd.testing.assert_series_equal(ma["val/median_mm"], mb["val/median_mm"])
    assert (b / "oof.csv").read_text() == (a / "oof.csv").read_text()
    assert main([*common, f"run_dir={tmp_path / 'killed'}", "resume=true"]) == 0  # finished: nothing to do


def test_a_kill_between_the_weights_and_the_checkpoint_keeps_the_previous_epoch(cache_dir, tmp_path, monkeypatch,
                                                                              capsys):
    """The second epoch's weights are written, then the save dies before checkpoint.pt: the first epoch's pair
    is still whole, and resume continues from it to the very weights of an uninterrupted run."""
    from spine.train import checkpoint

    common = [*TINY, f"cache_dir={cache_dir}", "fold=1", "epochs=2", "ema=0.9"]
    assert main([*common, f"run_dir={tmp_path / 'straight'}"]) == 0
    save_torch = checkpoint.save_torch

    def die_before_the_state_of_epoch_2(obj, path):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            raise _Killed
        save_torch(obj, path)

    monkeypatch.setattr(checkpoint, "save_torch", die_before_the_state_of_epoch_2)
    with pytest.raises(_Killed):
        main([*common, f"run_dir={tmp_path / 'killed'}"])
    monkeypatch.setattr(checkpoint, "save_torch", save_torch)
    fold = tmp_path / "killed" / "fold1"
    assert (fold / "last.e0001.safetensors").is_file()  # the new weights, beside the pair of the first epoch
    pair = checkpoint.checkpoint_weights(fold)
    assert {k: checkpoint.weights_epoch(p) for k, p in pair.items()} == {"last": 0, "last_ema": 0}
    capsys.readouterr()

    assert main([*common, f"run_dir={tmp_path / 'killed'}", "resume=true"]) == 0
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    a, b = tmp_path / "straight" / "fold1", fold
    for name in ("model.safetensors", "last.e0001.safetensors", "last_ema.e0001.safetensors"):
        wa, wb = _weights(a / name), _weights(b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv").drop(columns=_TIMES),
                                  pd.read_csv(b / "metrics.csv").drop(columns=_TIMES))
    left = sorted(p.name for p in b.iterdir() if p.name.startswith(("last", ".")))
    assert left == ["last.e0001.safetensors", "last_ema.e0001.safetensors"]  # stale pairs and temp files gone


_TIMES = ["train/samples_per_s", "train/data_s_per_batch", "train/step_s_per_batch", "epoch_s"]


def test_fold_all_writes_a_complete_run_folder(cache_dir, tmp_path):
    from spine.cache import Cache
    from spine.models import create_model

    run_dir = tmp_path / "run"
    assert main([*TINY, f"cache_dir={cache_dir}", f"run_dir={run_dir}", "fold=all", "epochs=1"]) == 0
    cache = Cache.open(cache_dir)
    for name in ("config.yaml", "oof.csv", "test.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    oof = pd.read_csv(run_dir / "oof.csv")
    assert sorted(oof.study_id.unique()) == sorted(cache.folds.study_id)  # every training study, once
    assert len(oof) == 25 * len(cache.folds) and set(oof.fold) == {0, 1}
    test = pd.read_csv(run_dir / "test.csv")
    assert len(test) == 25 * test.study_id.nunique() and test.study_id.nunique() >= 1
    assert not set(test.study_id) & set(cache.folds.study_id)
    assert set(json.loads((run_dir / "metrics.json").read_text())["oof"]) >= {"median_mm", "p90_mm", "level_acc",
                                                                            "within_5mm", "within_10mm"}
    fold = run_dir / "fold0"
    for name in ("config.yaml", "run.json", "model.json", "model.safetensors", "checkpoint.pt", "metrics.csv",
                 "oof.csv", "test.csv", "val_epoch001.png"):
        assert (fold / name).is_file(), name
    assert json.loads((fold / "run.json").read_text())["cache_id"] == cache.cache_id
    metrics = pd.read_csv(fold / "metrics.csv")
    assert {"train/loss", "train/samples_per_s", "train/data_s_per_batch", "train/step_s_per_batch", "lr",
            "val/median_mm", "val/level_acc"} <= set(metrics.columns)
    # the fold folder alone rebuilds the model
    spec = json.loads((fold / "model.json").read_text())
    model = create_model(spec["name"], weights=fold / "model.safetensors", **spec["kwargs"])
    assert model(torch.zeros(1, 2, 8, 32, 32)).shape[:2] == (1, 25)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, overrides: list[str], port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from spine.train import engine

    fit = engine.fit

    def fit_and_record(cfg, stage, fold, folder, rt):  # each process writes a checksum of its final weights
        metrics = fit(cfg, stage, fold, folder, rt)
        from safetensors.torch import load_file

        from spine.train.checkpoint import checkpoint_weights

        w = load_file(str(checkpoint_weights(folder)["last"]))
        Path(out, f"rank{rank}.txt").write_text(repr(sum(float(v.double().sum()) for v in w.values())))
        return metrics

    import spine.train.run as run_module

    run_module.fit = fit_and_record
    assert main(overrides) == 0


def test_ddp_with_two_cpu_processes(cache_dir, tmp_path):
    """The code path torchrun takes (env://, gloo), in two forked processes of this test session."""
    import torch.multiprocessing as mp

    run_dir = tmp_path / "ddp"
    overrides = [*TINY, f"cache_dir={cache_dir}", f"run_dir={run_dir}", "fold=0", "epochs=2", "batch_size=1"]
    mp.start_processes(_ddp_worker, args=(overrides, _free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    run = json.loads((run_dir / "fold0" / "run.json").read_text())
    assert run["world_size"] == 2
    oof = pd.read_csv(run_dir / "oof.csv")
    from spine.cache import Cache

    folds = Cache.open(cache_dir).folds
    assert sorted(oof.study_id.unique()) == sorted(folds[folds.fold == 0].study_id)  # gathered from both ranks
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text()  # weights in sync
    metrics = pd.read_csv(run_dir / "fold0" / "metrics.csv")
    assert len(metrics) == 2 and metrics["train/loss"].notna().all()


def test_console_script_is_installed_and_validates_its_config():
    script = Path(sys.executable).with_name("spine-train")
    assert script.is_file(), "pip install -e . registers spine-train"
    done = subprocess.run([str(script), "stage=nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Available options in 'stage': grading landmarks" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SPINE_SLOW"), reason="about 30 s; set SPINE_SLOW=1")
def test_torchrun_cli_with_two_cpu_processes(cache_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    run_dir = tmp_path / "torchrun"
    done = subprocess.run([str(torchrun), "--nproc_per_node=2", "-m", "spine.train", *TINY, f"cache_dir={cache_dir}",
                           f"run_dir={run_dir}", "fold=0", "epochs=1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run_dir / "fold0" / "run.json").read_text())["world_size"] == 2
    assert (run_dir / "oof.csv").is_file()
