"""``python -m spine.kaggle selftest``: run a build's notebook as Kaggle would, on this machine.

```
<work>/
  kaggle/input/<code_dataset>       -> <build>/code             (symlinks: the datasets as uploaded)
  kaggle/input/<weights_dataset>    -> <build>/weights
  kaggle/input/<competition>/       test_series_descriptions.csv, test_images/, sample_submission.csv -> <data_dir>
  kaggle/working/                   the notebook's working directory: submission.csv, inference.executed.ipynb
  venv/                             a fresh venv of the base interpreter (without pip: the image has one)
  preinstalled/                     the Kaggle image: links to this environment's `provided` distributions
  jupyter/                          the kernel spec (the venv's python) and the connection file
```

Why a link farm rather than ``--system-site-packages``: torch and the rest live in this project's venv, not in
the base interpreter's site-packages (which holds unrelated packages instead). The venv gets a ``.pth`` that adds
``preinstalled/`` as a site directory *after* its own site-packages: the distributions the build assumed to be
on Kaggle (``provided``: torch, numpy, ...), their dependencies, and ipykernel with its own (Kaggle runs
notebooks in Jupyter), each linked file by file from this environment, so pip sees them as installed and does not
replace them. Everything else the notebook needs (spine and the bundled wheels) it has to install itself, from
the code dataset, with ``pip install --no-index``: exactly what happens on Kaggle. The notebook is executed
headless by nbclient with a kernel spec whose argv is the new venv's python; afterwards the self-test checks that
spine and every bundled distribution not preinstalled was installed into the venv (at the bundled version) and
imports from there, with the working directory outside the repository; then it scores the submission.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from spine.kaggle.config import SelftestConfig
from spine.kaggle.wheels import canonical, matches

KERNEL = "spine-kaggle-selftest"
# Kaggle's notebooks run in Jupyter (the kernel and its dependencies) and the image has pip (and setuptools,
# which torch requires); the venv is made without pip, so these are the image's.
ALWAYS_PREINSTALLED = ["ipykernel", "pip"]
NEVER_PREINSTALLED = {"spine"}


class SelftestError(RuntimeError):
    """The bundle does not work; the message says where."""


@dataclass
class SelftestResult:
    work: Path
    submission: Path
    rows: int
    studies: int
    score: dict | None
    from_bundle: list[str] = field(default_factory=list)  # distributions the notebook installed from code/
    preinstalled: list[str] = field(default_factory=list)  # bundled ones the fake image already had
    timings: dict[str, float] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[kaggle selftest] {msg}", flush=True)


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        raise SelftestError(f"{what} failed (exit code {proc.returncode}):\n$ {' '.join(map(str, cmd))}\n"
                            f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    return proc


# --------------------------------------------------------------------------------------------------------------
# the fake Kaggle image


def _requirement_closure(roots: list[md.Distribution]) -> dict[str, md.Distribution]:
    from packaging.requirements import Requirement

    found: dict[str, md.Distribution] = {}
    queue = list(roots)
    while queue:
        dist = queue.pop()
        name = canonical(dist.metadata["Name"])
        if name in found or name in NEVER_PREINSTALLED:
            continue
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                queue.append(md.distribution(req.name))
            except md.PackageNotFoundError:
                pass  # an optional platform dependency that this environment does without
    return found


def preinstalled_distributions(provided: list[str]) -> dict[str, md.Distribution]:
    """This environment's distributions that stand for the Kaggle image: those matching ``provided``, ipykernel,
    and everything they require."""
    roots, seen = [], set()
    for dist in md.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if name and name not in seen and (matches(name, provided) or name in ALWAYS_PREINSTALLED):
            seen.add(name)
            roots.append(md.distribution(name))  # the one first on sys.path
    missing = [n for n in ALWAYS_PREINSTALLED if n not in seen]
    if missing:
        raise SelftestError(f"{', '.join(missing)} is not installed here: install the dev extra "
                            f"(uv pip install -e '.[dev]')")
    return _requirement_closure(roots)


def _files(dist: md.Distribution) -> set[tuple[str, ...]]:
    return {rel.parts for rel in dist.files or []
            if rel.parts and rel.parts[0] != ".." and not rel.is_absolute() and "__pycache__" not in rel.parts}


def link_preinstalled(dists: dict[str, md.Distribution], dest: Path) -> list[Path]:
    """Link the files of ``dists`` into site directories under ``dest`` (one per site-packages they come from),
    a whole folder at once where no other distribution of that site-packages has files in it. Returns the
    site directories."""
    by_site: dict[Path, list[md.Distribution]] = {}
    for dist in dists.values():
        by_site.setdefault(Path(dist.locate_file("")).resolve(), []).append(dist)
    sites = []
    for index, (site, exposed) in enumerate(sorted(by_site.items())):
        out = dest / str(index)
        out.mkdir(parents=True)
        names = {canonical(d.metadata["Name"]) for d in exposed}
        shown = set().union(*(_files(d) for d in exposed))
        hidden: set[tuple[str, ...]] = set()
        for other in md.distributions(path=[str(site)]):
            if canonical(other.metadata["Name"] or "") not in names:
                for parts in _files(other):
                    hidden.update(parts[:k] for k in range(1, len(parts) + 1))

        for top in sorted({f[:1] for f in shown}):
            _place(top, site, out, shown, hidden)
        sites.append(out)
    return sites


def _place(prefix: tuple[str, ...], site: Path, out: Path, shown: set, hidden: set) -> None:
    """Link site/prefix to out/prefix, or, where a hidden distribution has files under it, make the folder and
    place its shown children."""
    src, dst = site.joinpath(*prefix), out.joinpath(*prefix)
    if not src.exists():
        return
    if prefix not in hidden or not src.is_dir():
        dst.symlink_to(src, target_is_directory=src.is_dir())
        return
    dst.mkdir()
    n = len(prefix)
    for child in sorted({f[: n + 1] for f in shown if len(f) > n and f[:n] == prefix}):
        _place(child, site, out, shown, hidden)


def make_venv(python: str, venv: Path, sites: list[Path]) -> tuple[Path, Path]:
    """An empty venv of ``python`` whose site-packages is followed by ``sites``; returns (python, purelib)."""
    _run([python, "-m", "venv", "--without-pip", str(venv)], "creating the venv")
    vpython = venv / "bin" / "python"
    version = _run([str(vpython), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], "running the venv")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version.stdout.strip() != here:
        raise SelftestError(f"python={python} is Python {version.stdout.strip()}, but the fake image is linked from "
                            f"this environment's Python {here}: they must match")
    purelib = Path(_run([str(vpython), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        "asking the venv for its site-packages").stdout.strip())
    lines = "".join(f"import site; site.addsitedir({str(s)!r})\n" for s in sites)
    (purelib / "_spine_selftest_preinstalled.pth").write_text(lines)
    return vpython, purelib


def layout_input(build: Path, data_dir: Path, kaggle: Path, info: dict) -> tuple[Path, Path]:
    """The fake /kaggle: input/<datasets> and input/<competition> as links, and an empty working/."""
    inputs, working = kaggle / "input", kaggle / "working"
    inputs.mkdir(parents=True)
    working.mkdir()
    (inputs / info["code_dataset"]).symlink_to(build / "code", target_is_directory=True)
    (inputs / info["weights_dataset"]).symlink_to(build / "weights", target_is_directory=True)
    competition = inputs / info["competition"]
    competition.mkdir()
    for name in ("test_series_descriptions.csv", "test_images", "sample_submission.csv"):
        if (data_dir / name).exists():
            (competition / name).symlink_to(data_dir / name, target_is_directory=(data_dir / name).is_dir())
    return inputs, working


def kernel_env(venv: Path, inputs: Path, submission: Path, work: Path) -> dict[str, str]:
    """The kernel's environment: this one without anything pointing into this project or its venv, plus the
    notebook's path overrides and pip's offline switch."""
    drop = ("SPINE_", "PYTHON", "PIP_", "VIRTUAL_ENV", "CONDA_", "JUPYTER_", "IPYTHONDIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    here = Path(sys.prefix).resolve()
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and here not in Path(p).resolve().parents]
    env.update({
        "PATH": os.pathsep.join([str(venv / "bin"), *path]),
        "SPINE_INPUT_DIR": str(inputs),
        "SPINE_OUT": str(submission),
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,  # no find-links or index from this machine's pip.conf
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_COLOR": "1",
        "PYTHONNOUSERSITE": "1",
        "IPYTHONDIR": str(work / "ipython"),
        "MPLBACKEND": "Agg",
    })
    return env


# --------------------------------------------------------------------------------------------------------------
# running the notebook


def execute_notebook(src: Path, dst: Path, vpython: Path, jupyter: Path, env: dict[str, str], cwd: Path,
                     timeout: int) -> dict[int, float]:
    """Execute ``src`` with a kernel of ``vpython`` (kernel spec in ``jupyter``), save it to ``dst``; returns
    seconds per cell index (-1: kernel start). Raises SelftestError with the failing cell's output."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    spec_dir = jupyter / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(vpython), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "spine self-test", "language": "python"}))
    km = KernelManager(kernel_name=KERNEL, connection_file=str(jupyter / "connection.json"),
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(jupyter / "kernels")]))
    nb = nbformat.read(src, as_version=4)
    nbformat.validate(nb)
    seconds: dict[int, float] = {}
    started = {"t": time.perf_counter()}

    def on_cell_execute(cell, cell_index, **_):
        if -1 not in seconds:
            seconds[-1] = time.perf_counter() - started["t"]
        started[cell_index] = time.perf_counter()

    def on_cell_executed(cell, cell_index, **_):
        seconds[cell_index] = time.perf_counter() - started[cell_index]
        text = _cell_text(cell)
        _log(f"cell {cell_index} ({seconds[cell_index]:.1f} s)" + (":\n    " + text.replace("\n", "\n    ")
                                                                     if text else ""))

    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=KERNEL, allow_errors=False,
                            resources={"metadata": {"path": str(cwd)}},
                            on_cell_execute=on_cell_execute, on_cell_executed=on_cell_executed)
    try:
        client.execute(env=env, cwd=str(cwd))
    except CellExecutionError as err:
        failed = next((c for c in nb.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))),
                      None)
        output = _cell_text(failed, 60) if failed is not None else ""
        raise SelftestError(f"the notebook failed: {err.ename}: {err.evalue}\n--- cell output (last lines) ---\n"
                            f"{output}\n--- executed notebook: {dst} ---") from None
    except Exception as err:  # noqa: BLE001 - kernel died, timeout, ...: one line, the run is over either way
        raise SelftestError(f"the notebook could not run: {type(err).__name__}: {err}") from None
    finally:
        nbformat.write(nb, dst)
        if km.has_kernel:  # nbclient leaves a kernel manager it was given running
            km.shutdown_kernel(now=False)
    return seconds


def _cell_text(cell, last: int = 25) -> str:
    lines: list[str] = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            lines += output.get("text", "").splitlines()
        elif output.get("output_type") == "error":
            lines += [f"{output.get('ename')}: {output.get('evalue')}"]
    lines = [ln.rsplit("\r", 1)[-1] for ln in lines]  # progress bars: the last state of each line
    return "\n".join(lines[-last:])


_PROBE = r"""
import importlib, importlib.metadata as md, json, sys, sysconfig
names, imports = json.loads(sys.argv[1]), json.loads(sys.argv[2])
res = {"purelib": sysconfig.get_paths()["purelib"], "dists": {}, "imports": {}}
for n in names:
    try:
        d = md.distribution(n)
        res["dists"][n] = {"version": d.version, "location": str(d.locate_file(""))}
    except md.PackageNotFoundError:
        res["dists"][n] = None
import spine
res["spine_file"] = spine.__file__
for mod in imports:
    try:
        m = importlib.import_module(mod)
        res["imports"][mod] = getattr(m, "__file__", None) or ""
    except BaseException as err:
        res["imports"][mod] = "ERROR " + type(err).__name__ + ": " + str(err)
print(json.dumps(res))
"""


def _top_level_modules(dist: md.Distribution) -> list[str]:
    files = _files(dist)
    mods = set()
    for parts in files:
        if len(parts) == 1 and parts[0].endswith((".py", ".so")):
            mods.add(parts[0].split(".")[0])
        elif len(parts) == 2 and parts[1] == "__init__.py" and not parts[0].endswith((".dist-info", ".data")):
            mods.add(parts[0])
    return sorted(m for m in mods if not m.startswith("_") and m not in ("test", "tests", "docs", "examples"))


def check_install(vpython: Path, purelib: Path, info: dict, preinstalled: set[str], cwd: Path,
                  env: dict[str, str], check_imports: bool) -> tuple[list[str], list[str]]:
    """spine and every bundled distribution the image lacks must come from the venv, at the bundled version,
    and import from there. Returns (installed from the bundle, already preinstalled)."""
    bundle = {canonical(b["name"]): b for b in info["bundle"]}
    from_bundle = sorted(n for n in bundle if n not in preinstalled)
    imports = []
    if check_imports:
        for name in from_bundle:
            imports += _top_level_modules(md.distribution(name))
    proc = _run([str(vpython), "-c", _PROBE, json.dumps(sorted(bundle)), json.dumps(imports)],
                "probing the venv", cwd=cwd, env=env)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    purelib = Path(res["purelib"]).resolve()
    spine_file = Path(res["spine_file"]).resolve()
    if purelib not in spine_file.parents:
        raise SelftestError(f"spine was imported from {spine_file}, not from the venv ({purelib})")
    problems = []
    for name in from_bundle:
        got = res["dists"].get(name)
        if got is None:
            problems.append(f"{name}: not installed")
        elif Path(got["location"]).resolve() != purelib:
            problems.append(f"{name}: found in {got['location']}, not installed into the venv from the bundle")
        elif got["version"] != bundle[name]["version"]:
            problems.append(f"{name}: {got['version']} installed, the bundle has {bundle[name]['version']}")
    for mod, where in res["imports"].items():
        if where.startswith("ERROR"):
            problems.append(f"import {mod}: {where[6:]}")
        elif where and purelib not in Path(where).resolve().parents:
            problems.append(f"import {mod}: from {where}, not from the venv")
    if problems:
        raise SelftestError("the bundle did not install as expected:\n  " + "\n  ".join(problems))
    return from_bundle, sorted(n for n in bundle if n in preinstalled)


def check_submission(submission: Path, data_dir: Path, labels: Path | None) -> tuple[int, int, dict | None,
                                                                                     float | None]:
    """(rows, studies, score or None, oracle score or None); raises SelftestError for a malformed submission."""
    import numpy as np
    import pandas as pd

    from spine.metric import score

    if not submission.is_file():
        raise SelftestError(f"the notebook wrote no {submission}")
    sub = pd.read_csv(submission, dtype={"row_id": str})
    studies = pd.read_csv(data_dir / "test_series_descriptions.csv")["study_id"].nunique()
    columns = ["row_id", "normal_mild", "moderate", "severe"]
    if list(sub.columns) != columns:
        raise SelftestError(f"submission columns {list(sub.columns)}, expected {columns}")
    if len(sub) != 25 * studies or sub["row_id"].duplicated().any():
        raise SelftestError(f"submission has {len(sub)} rows ({sub['row_id'].nunique()} distinct) for {studies} "
                            f"studies, expected {25 * studies}")
    probs = sub[columns[1:]].to_numpy(dtype=float)
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise SelftestError("submission has probabilities that are not finite or outside [0, 1]")
    result = oracle = None
    if labels is not None:
        truth = pd.read_csv(labels)
        result = score(truth, sub)
        if (data_dir / "oracle_submission.csv").is_file():
            oracle = score(truth, pd.read_csv(data_dir / "oracle_submission.csv", dtype={"row_id": str}))["score"]
    return len(sub), studies, result, oracle


# --------------------------------------------------------------------------------------------------------------


def selftest(cfg: SelftestConfig) -> SelftestResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    build = Path(cfg.build).expanduser().resolve()
    data_dir = Path(cfg.data_dir).expanduser().resolve()
    if not (build / "build.json").is_file():
        raise SelftestError(f"{build} is not the out folder of `python -m spine.kaggle build` (no build.json)")
    info = json.loads((build / "build.json").read_text())
    if not info.get("complete"):
        raise SelftestError(f"{build} holds an incomplete build: run the build again")
    for name in ("test_series_descriptions.csv", "test_images"):
        if not (data_dir / name).exists():
            raise SelftestError(f"data_dir {data_dir} has no {name}")
    labels = Path(cfg.labels).expanduser().resolve() if cfg.labels else data_dir / "test_labels.csv"
    if not labels.is_file():
        if cfg.labels:
            raise SelftestError(f"labels {labels} does not exist")
        _log(f"no {labels.name} in data_dir: the submission is checked but not scored")
        labels = None

    temporary = not cfg.work
    work = Path(tempfile.mkdtemp(prefix="spine-kaggle-selftest-")) if temporary else Path(cfg.work).resolve()
    for sub in ("kaggle", "venv", "preinstalled", "jupyter", "ipython"):
        if (work / sub).exists():
            shutil.rmtree(work / sub)
    work.mkdir(parents=True, exist_ok=True)
    _log(f"work folder {work}")
    ok = False
    try:
        inputs, working = layout_input(build, data_dir, work / "kaggle", info)

        t = time.perf_counter()
        preinstalled = preinstalled_distributions(info["provided"])
        sites = link_preinstalled(preinstalled, work / "preinstalled")
        timings["preinstalled_s"] = time.perf_counter() - t
        python = cfg.python or getattr(sys, "_base_executable", None) or sys.executable
        t = time.perf_counter()
        vpython, purelib = make_venv(python, work / "venv", sites)
        timings["venv_s"] = time.perf_counter() - t
        _log(f"venv of {python} in {timings['venv_s']:.1f} s; the fake image: {len(preinstalled)} "
             f"distributions linked in {timings['preinstalled_s']:.1f} s")

        submission = working / "submission.csv"
        env = kernel_env(work / "venv", inputs, submission, work)
        seconds = execute_notebook(build / "inference.ipynb", working / "inference.executed.ipynb", vpython,
                                   work / "jupyter", env, working, cfg.timeout)
        names = {1: "paths", 2: "install", 3: "predict", 4: "submission"}
        timings["kernel_start_s"] = seconds.get(-1, math.nan)
        for index, name in names.items():
            timings[f"cell_{name}_s"] = seconds.get(index, math.nan)

        t = time.perf_counter()
        from_bundle, already = check_install(vpython, purelib, info, set(preinstalled), work, env, cfg.check_imports)
        timings["check_install_s"] = time.perf_counter() - t
        rows, studies, result, oracle = check_submission(submission, data_dir, labels)
        timings["total_s"] = time.perf_counter() - t0
        ok = True
    finally:
        if temporary and ok and not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            _log(f"kept the work folder for a look: {work}")

    _log(f"installed from the bundle: {', '.join(from_bundle) or '-'}")
    _log(f"bundled but already on the fake image: {', '.join(already) or '-'}")
    _log(f"submission: {rows} rows for {studies} studies")
    if result is not None:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "score")
        _log(f"score {result['score']:.4f} ({parts})" + (f"; oracle {oracle:.4f}" if oracle is not None else ""))
    _log("timings: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in timings.items()))
    _log("PASSED")
    return SelftestResult(work=work, submission=submission, rows=rows, studies=studies, score=result,
                          from_bundle=from_bundle, preinstalled=already, timings=timings)
