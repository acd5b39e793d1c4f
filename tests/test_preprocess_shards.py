"""``shard=K/N``: N preprocessing runs side by side into one cache, then a final run that writes the tables, give
the cache of a single run, file for file and byte for byte; a shard never runs twice at once, and a whole run
waits for the shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spine.cli import ConfigError, compose
from spine.preprocess.config import PreprocessConfig
from spine.preprocess.lock import CacheBusyError, writer_lock
from spine.preprocess.run import run, shard_jobs


def config(data: Path, cache: Path, *extra: str) -> PreprocessConfig:
    return compose("preprocess", [f"data_dir={data}", f"cache_dir={cache}", "split=all", "workers=1",
                                  "progress=false", "n_folds=2", *extra], PreprocessConfig)


def contents(root: Path) -> dict[str, bytes]:
    """Every file of a cache by its path in it, without the lock files; cache.json without its creation time."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and not p.name.endswith(".lock")}
    info = json.loads(files.pop("cache.json"))
    info.pop("created")
    files["cache.json"] = json.dumps(info, sort_keys=True).encode()
    return files


def test_three_shards_side_by_side_then_a_final_run_give_the_single_run_cache(tiny_dataset, tmp_path):
    single = run(config(tiny_dataset, tmp_path / "single"))
    assert single.exit_code == 0 and single.n_errors == 0
    command = [sys.executable, "-m", "spine.preprocess", f"data_dir={tiny_dataset}", f"cache_dir={tmp_path / 'shared'}",
               "split=all", "workers=1", "progress=false", "n_folds=2"]
    shards = [subprocess.Popen([*command, f"shard={k}/3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for k in range(3)]  # at once, as N machines on a shared filesystem would
    for k, shard in enumerate(shards):
        out, err = shard.communicate(timeout=300)
        assert shard.returncode == 0, (k, err)
        assert f"shard {k}/3 done" in err
    root = tmp_path / "shared" / Path(single.cache_root).name  # the same cache id
    assert not (root / "series.csv").exists() and not (root / "folds.csv").exists()  # the final run writes them
    built = len(list((root / "volumes").glob("*/*.json")))
    assert built == single.n_series  # every series once, among the three shards

    final = run(config(tiny_dataset, tmp_path / "shared"))
    assert final.n_built == 0 and final.n_cached == single.n_series  # found every series complete
    assert contents(root) == contents(Path(single.cache_root))


def test_shares_are_disjoint_and_cover_every_series():
    jobs = list(range(11))
    shares = [shard_jobs(jobs, (k, 4)) for k in range(4)]
    assert sorted(j for share in shares for j in share) == jobs
    assert [len(s) for s in shares] == [3, 3, 3, 2] and shard_jobs(jobs, None) == jobs


@pytest.mark.parametrize("shard", ["3/3", "1", "a/b", "-1/2"])
def test_a_shard_that_is_not_k_of_n_is_refused(shard):
    with pytest.raises(ConfigError, match="shard must be K/N"):
        compose("preprocess", [f"shard={shard}"], PreprocessConfig)


def test_shards_run_together_but_not_twice_nor_beside_a_whole_run(tmp_path):
    root = tmp_path / "cache"
    with writer_lock(root, (0, 2)), writer_lock(root, (1, 2)):  # two shards side by side
        with pytest.raises(CacheBusyError, match="another run of shard 0/2"):
            with writer_lock(root, (0, 2)):
                pass
        with pytest.raises(CacheBusyError, match="being written by another preprocessing run"):
            with writer_lock(root):  # the final run before the shards have ended
                pass
    with writer_lock(root):
        with pytest.raises(CacheBusyError, match="a preprocessing run without shard \\(pid"):
            with writer_lock(root, (1, 2)):
                pass
    with writer_lock(root):  # every lock released
        pass
