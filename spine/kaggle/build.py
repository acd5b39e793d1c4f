"""``python -m spine.kaggle build``: the two Kaggle datasets and the notebook of an offline submission.

```
out/
  code/                  dataset 1: spine-<version>-py3-none-any.whl + the wheels Kaggle lacks, dataset-metadata.json
  weights/               dataset 2: <run>/... (what inference needs), runs.txt, manifest.json, dataset-metadata.json
  inference.ipynb        the notebook: paths, pip install --no-index, spine.predict, a look at the submission
  kernel-metadata.json   for `kaggle kernels push -p out`
  README.md              how to upload
  build.json             what was bundled and why, the requirements on the Kaggle image, timings
```
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from spine.kaggle import notebook
from spine.kaggle import wheels as W
from spine.kaggle.config import BuildConfig
from spine.run_folder import CONFIG_YAML

OUTPUTS = ("code", "weights", "inference.ipynb", "kernel-metadata.json", "README.md", "build.json")
BUILD_JSON = "build.json"
RUNS_TXT = "runs.txt"


class BuildError(RuntimeError):
    """A build that cannot go on; the message says why."""


@dataclass
class BuildResult:
    out: Path
    project_wheel: Path
    wheels: list[Path] = field(default_factory=list)  # the bundled dependency wheels
    runs: list[str] = field(default_factory=list)  # run folder names, in order
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[kaggle build] {msg}", flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


# --------------------------------------------------------------------------------------------------------------
# weights


def select_files(run: Path, include: list[str], exclude: list[str]) -> tuple[list[Path], list[Path]]:
    """(copied, skipped) files of a run folder, relative to it: a file is copied when its name matches an
    ``include`` glob and no part of its relative path matches an ``exclude`` glob."""
    copied, skipped = [], []
    for root, dirs, files in os.walk(run, followlinks=True):
        rel_root = Path(root).relative_to(run)
        dirs.sort()
        for name in sorted(files):
            rel = rel_root / name
            excluded = any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in exclude)
            if not excluded and any(fnmatch.fnmatch(name, pat) for pat in include):
                copied.append(rel)
            else:
                skipped.append(rel)
    return copied, skipped


def copy_runs(runs: list[Path], dest: Path, include: list[str], exclude: list[str]) -> list[dict]:
    """Copy the selected files of each run into ``dest/<run name>/``; returns the manifest entries."""
    entries = []
    for run in runs:
        copied, skipped = select_files(run, include, exclude)
        if not any(p.suffix == ".safetensors" for p in copied):
            _log(f"warning: run {run.name} has no *.safetensors among the copied files")
        files = []
        for rel in copied:
            target = dest / run.name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / rel, target)
            files.append({"path": rel.as_posix(), "size": target.stat().st_size, "sha256": _sha256(target)})
        skipped_bytes = sum((run / rel).stat().st_size for rel in skipped)
        entries.append({"name": run.name, "source": str(run), "files": files,
                        "skipped": len(skipped), "skipped_bytes": skipped_bytes})
        _log(f"run {run.name}: {len(files)} files ({_size(sum(f['size'] for f in files))}) copied, "
             f"{len(skipped)} ({_size(skipped_bytes)}) left out")
    return entries


def check_runs(runs: list[str]) -> list[Path]:
    if not runs:
        raise BuildError("runs=[...] is required: the run folders spine-predict takes, in order")
    paths = [Path(r).expanduser().resolve() for r in runs]
    for path in paths:
        if not path.is_dir():
            raise BuildError(f"run folder {path} does not exist")
        if not (path / CONFIG_YAML).is_file():
            raise BuildError(f"{path} is not a run folder (no config.yaml)")
    names = [p.name for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BuildError(f"run folder names must be unique (they are the folder names on Kaggle): {duplicates}")
    return paths


def prepare_out(out: Path) -> None:
    """Make ``out`` ready: create it, or clear the outputs of a previous build; refuse a folder that is not ours."""
    if out.exists() and any(out.iterdir()) and not (out / BUILD_JSON).exists():
        raise BuildError(f"{out} is not empty and holds no {BUILD_JSON}: not overwriting it; choose another out")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    # marks the folder as a build's, so that the next build may clear it even when this one fails
    _write_json(out / BUILD_JSON, {"complete": False})


# --------------------------------------------------------------------------------------------------------------
# metadata


def dataset_metadata(user: str, slug: str, license_name: str, subtitle: str) -> dict:
    title = slug if len(slug) >= 6 else f"{slug} files"
    return {"title": title, "id": f"{user or 'INSERT_USERNAME_HERE'}/{slug}", "subtitle": subtitle,
            "licenses": [{"name": license_name}]}


def kernel_metadata(cfg: BuildConfig) -> dict:
    user = cfg.user or "INSERT_USERNAME_HERE"
    return {
        "id": f"{user}/{cfg.notebook}", "title": cfg.notebook, "code_file": "inference.ipynb",
        "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": cfg.gpu,
        "enable_tpu": False, "enable_internet": False,
        "dataset_sources": [f"{user}/{cfg.code_dataset}", f"{user}/{cfg.weights_dataset}"],
        "competition_sources": [cfg.competition], "kernel_sources": [], "model_sources": [],
    }


def read_freeze(path: str) -> dict[str, str]:
    """``name==version`` lines (pip list --format=freeze / pip freeze) as {canonical name: version}."""
    versions = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            versions[W.canonical(name.split("[")[0].strip())] = version.strip()
        elif " @ " in line:
            versions.setdefault(W.canonical(line.split(" @ ")[0].strip()), "")
    return versions


def check_freeze(resolution: W.Resolution, kaggle: dict[str, str]) -> list[str]:
    """Requirements on ``provided`` distributions that the Kaggle image (its freeze) does not satisfy."""
    from packaging.requirements import Requirement

    problems = []
    for name, entries in resolution.provided.items():
        if name not in kaggle:
            problems.append(f"{name} is assumed preinstalled but the Kaggle freeze lacks it: remove it from "
                            f"provided so that it is bundled")
            continue
        for entry in entries:
            spec = Requirement(entry.rsplit(" (", 1)[0]).specifier
            if kaggle[name] and not spec.contains(kaggle[name], prereleases=True):
                problems.append(f"{entry} but Kaggle has {name} {kaggle[name]}")
    return problems


# --------------------------------------------------------------------------------------------------------------
# the build


def build(cfg: BuildConfig) -> BuildResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    runs = check_runs(cfg.runs)
    out = Path(cfg.out).expanduser().resolve()
    if any(run == out or out in run.parents or run in out.parents for run in runs):
        raise BuildError(f"out={out} must not overlap a run folder")
    prepare_out(out)
    code, weights = out / "code", out / "weights"
    code.mkdir()
    warnings: list[str] = []

    # 1. the project wheel, and the requirements it declares
    t = time.perf_counter()
    project = W.find_project(cfg.project)
    if project is not None:
        _log(f"building the spine wheel from {project}")
        project_wheel = W.build_project_wheel(project, code)
    else:
        _log("spine is installed from a wheel here: repacking it")
        project_wheel = W.repack_installed("spine", code)
    meta = W.wheel_metadata(project_wheel)
    roots = list(cfg.bundle) or list(meta.get_all("Requires-Dist") or [])
    roots += list(cfg.extra)
    timings["project_wheel_s"] = time.perf_counter() - t

    # 2. which dependencies to bundle
    resolution = W.resolve_bundle(roots, cfg.provided, origin=f"spine {meta['Version']}")
    warnings += [f"installed version outside a requirement: {p}" for p in resolution.problems]
    if cfg.kaggle_freeze:
        problems = check_freeze(resolution, read_freeze(cfg.kaggle_freeze))
        if problems:
            raise BuildError("the Kaggle image (kaggle_freeze) does not satisfy what the bundle needs from it:\n  "
                             + "\n  ".join(problems))
    _log(f"bundling {len(resolution.bundle)} distributions: "
         + ", ".join(f"{d.metadata['Name']} {d.version}" for d in resolution.bundle.values()))

    # 3. their wheels
    t = time.perf_counter()
    by_name, download = _dependency_wheels(cfg, resolution, code, warnings)
    wheel_files = [by_name[n] for n in resolution.bundle]
    timings["wheels_s"] = time.perf_counter() - t
    _write_json(code / "dataset-metadata.json", dataset_metadata(
        cfg.user, cfg.code_dataset, cfg.license, "spine wheel + the wheels of its dependencies Kaggle lacks"))

    # 4. the weights
    t = time.perf_counter()
    _weights_dataset(cfg, runs, weights)
    timings["weights_s"] = time.perf_counter() - t

    # 5. notebook, kernel metadata, README, build.json
    nb = notebook.render({"CODE_DATASET": cfg.code_dataset, "WEIGHTS_DATASET": cfg.weights_dataset,
                          "COMPETITION": cfg.competition, "PREDICT_ARGS": list(cfg.predict_args)})
    notebook.write(nb, out / "inference.ipynb")
    _write_json(out / "kernel-metadata.json", kernel_metadata(cfg))
    timings["total_s"] = time.perf_counter() - t0
    bundle = [{"name": d.metadata["Name"], "version": d.version, "file": by_name[n].name,
               "size": by_name[n].stat().st_size, "required_by": resolution.required_by[n]}
              for n, d in resolution.bundle.items()]
    info = {
        "complete": True,
        "spine": {"version": meta["Version"], "file": project_wheel.name, "source": str(project or "installed")},
        "wheels": cfg.wheels,
        "python": {"here": sys.version.split()[0], "kaggle": cfg.python_version},
        "downloaded": sorted(download),
        "bundle": bundle,
        "provided": cfg.provided,
        "requirements_on_provided": resolution.provided,
        "runs": [run.name for run in runs],
        "code_dataset": cfg.code_dataset,
        "weights_dataset": cfg.weights_dataset,
        "competition": cfg.competition,
        "user": cfg.user,
        "warnings": warnings,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    (out / "README.md").write_text(_readme(cfg, info, code, weights))
    _write_json(out / BUILD_JSON, info)

    code_bytes = sum(p.stat().st_size for p in code.iterdir())
    weights_bytes = sum(p.stat().st_size for p in weights.rglob("*") if p.is_file())
    _log(f"code/    {len(wheel_files) + 1} wheels, {_size(code_bytes)}")
    _log(f"weights/ {len(runs)} runs, {_size(weights_bytes)}")
    for warning in warnings:
        _log(f"warning: {warning}")
    _log(f"wrote {out} in {timings['total_s']:.1f} s (spine wheel {timings['project_wheel_s']:.1f} s, "
         f"dependency wheels {timings['wheels_s']:.1f} s, weights {timings['weights_s']:.1f} s); "
         f"next: {out / 'README.md'}")
    return BuildResult(out=out, project_wheel=project_wheel, wheels=wheel_files, runs=[r.name for r in runs],
                       warnings=warnings, timings=timings)


def _dependency_wheels(cfg: BuildConfig, resolution, code: Path, warnings: list[str]) -> tuple[dict[str, Path], dict]:
    """(distribution name -> its wheel in ``code``, the distributions downloaded): pure-Python ones and, with
    ``wheels=repack``, all of them repacked from this environment; with ``wheels=download`` the compiled ones
    fetched for Kaggle's Python and platform. Wheels this Python made that Kaggle's cannot install are a warning."""
    # wheels=download fetches the compiled distributions for Kaggle's Python and platform; pure-Python ones are
    # the same files everywhere and are repacked (some, like antlr4-python3-runtime 4.9.3, exist only as sdists)
    download = {n: d for n, d in resolution.bundle.items() if cfg.wheels == "download" and not W.is_pure(d)}
    repack = [n for n in resolution.bundle if n not in download]
    with ThreadPoolExecutor(cfg.threads) as pool:
        # the largest first, so that the threads finish together
        order = sorted(repack, key=lambda n: -_installed_size(resolution.bundle[n]))
        by_name = dict(zip(order, pool.map(lambda n: W.repack_installed(n, code), order), strict=True))
    if download:
        reqs = [f"{d.metadata['Name']}=={d.version}" for d in download.values()]
        _log(f"pip download for Python {cfg.python_version}: {', '.join(reqs)}")
        for path in W.download_wheels(reqs, code, cfg.python_version, cfg.platforms):
            by_name[W.parse_wheel_name(path.name)[0]] = path
        missing = sorted(set(download) - set(by_name))
        if missing:
            raise BuildError(f"pip download gave no wheel for {missing}")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    bad = [by_name[n].name for n in resolution.bundle
           if not W.compatible_with(W.parse_wheel_name(by_name[n].name)[2], cfg.python_version)]
    if bad:
        warnings.append(f"Python {cfg.python_version} (python_version, Kaggle's) cannot install these wheels "
                        f"repacked from Python {here}: {', '.join(bad)}; use wheels=download "
                        f"python_version={cfg.python_version}, or build from a Python {cfg.python_version} env")
    return by_name, download


def _weights_dataset(cfg: BuildConfig, runs: list[Path], weights: Path) -> None:
    """The weights dataset: the run folders' inference files, their names in order, a manifest, the metadata."""
    weights.mkdir()
    run_entries = copy_runs(runs, weights, cfg.include, cfg.exclude)
    (weights / RUNS_TXT).write_text("".join(f"{run.name}\n" for run in runs))
    _write_json(weights / "manifest.json", {"runs": run_entries})
    _write_json(weights / "dataset-metadata.json", dataset_metadata(
        cfg.user, cfg.weights_dataset, cfg.license, "spine run folders: configs and weights for spine-predict"))


def _installed_size(dist) -> int:
    site = Path(dist.locate_file(""))
    total = 0
    for rel in dist.files or []:
        try:
            total += (site / rel).stat().st_size
        except OSError:
            pass
    return total


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _readme(cfg: BuildConfig, info: dict, code: Path, weights: Path) -> str:
    user = cfg.user or "<your-kaggle-username>"
    rows = "\n".join(f"| {b['name']} | {b['version']} | {_size(b['size'])} | {', '.join(b['required_by'])} |"
                     for b in info["bundle"])
    provided = "\n".join(f"| {name} | {'; '.join(reqs)} |" for name, reqs in info["requirements_on_provided"].items())
    warnings = "".join(f"- **warning**: {w}\n" for w in info["warnings"])
    return f"""# Kaggle submission bundle (spine {info['spine']['version']})

Made by `python -m spine.kaggle build` (docs/kaggle.md). Three things to upload:

| what | folder | Kaggle id | mounted at |
|---|---|---|---|
| code dataset | `code/` | `{user}/{cfg.code_dataset}` | `/kaggle/input/{cfg.code_dataset}` |
| weights dataset | `weights/` | `{user}/{cfg.weights_dataset}` | `/kaggle/input/{cfg.weights_dataset}` |
| notebook | `inference.ipynb` | `{user}/{cfg.notebook}` | |

{warnings}
## Upload

With the Kaggle CLI (`pip install kaggle`, an API token in `~/.kaggle/kaggle.json`){'' if cfg.user else
' and `user=<your-kaggle-username>` given to the build (or the ids in the three metadata files edited)'}:

```bash
kaggle datasets create -p {code}                      # later versions: kaggle datasets version -p ... -m "..."
kaggle datasets create -p {weights} --dir-mode zip    # run folders are folders: upload them zipped
kaggle kernels push -p {code.parent}                  # the notebook, with kernel-metadata.json
```

Or by hand: create two datasets from the two folders on kaggle.com (keep the slugs above, or change
`CODE_DIR`/`WEIGHTS_DIR` in the first cell), create a notebook from `inference.ipynb`, attach both datasets
and the competition, turn the internet off and the GPU on, and submit. The notebook finds a dataset under
another mount point by its content (`spine-*.whl`, `runs.txt`).

Runs, in the order spine-predict gets them: {', '.join(info['runs'])}.

## The code dataset

`{info['spine']['file']}` and the wheels below (repacked from this environment: `wheels={info['wheels']}`,
Python {info['python']['here']}; Kaggle's is assumed to be {info['python']['kaggle']}). pip installs a bundled
wheel only where the Kaggle image lacks the package or has a version outside the requirements.

| distribution | version | size | required by |
|---|---|---|---|
{rows}

## What the bundle needs from the Kaggle image

Not bundled (`provided`): {', '.join(cfg.provided)}. The requirements on them, to compare with `pip list` in a
Kaggle notebook (or give its `pip list --format=freeze` to the build as `kaggle_freeze=<file>`):

| distribution | requirements |
|---|---|
{provided}
"""
