"""Kaggle packaging: ``python -m spine.kaggle build`` and ``selftest`` (spine/kaggle/, docs/kaggle.md).

The build tests bundle a small closure (``bundle=[hydra-core]``: hydra-core, omegaconf, antlr4, packaging) to
stay fast; the default bundle (about 35 wheels, 75 MB, SimpleITK alone 52 MB) is only resolved, not written.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import spine
from spine.cli import compose
from spine.kaggle import wheels as W
from spine.kaggle.__main__ import main
from spine.kaggle.build import build, select_files
from spine.kaggle.config import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, DEFAULT_PROVIDED, BuildConfig, SelftestConfig

REPO = Path(spine.__file__).resolve().parent.parent
SMALL_BUNDLE = ["bundle=[hydra-core]", "threads=1"]


def make_run(root: Path, name: str) -> Path:
    """A run folder as spine-train writes it, with tiny files: what inference needs and what it does not."""
    import numpy as np
    from safetensors.numpy import save_file

    run = root / name
    fold = run / "fold0"
    (fold / "tb").mkdir(parents=True)
    (run / "config.yaml").write_text("stage:\n  name: x\n")
    (run / "calibration.json").write_text("{}\n")
    (run / "metrics.json").write_text("{}\n")
    (run / "oof.csv").write_text("row_id\n")
    (run / "test.csv").write_text("row_id\n")
    (fold / "config.yaml").write_text("stage:\n  name: x\n")
    (fold / "model.json").write_text(json.dumps({"name": "dummy", "args": {}}))
    (fold / "run.json").write_text("{}\n")
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(fold / "model.safetensors"))
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(fold / "last.safetensors"))
    (fold / "checkpoint.pt").write_bytes(b"\0" * 64)
    (fold / "metrics.csv").write_text("epoch\n0\n")
    (fold / "tb" / "events.out.tfevents.1").write_bytes(b"\0")
    (fold / "val_epoch001.png").write_bytes(b"\x89PNG")
    return run


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root, "landmarks"), make_run(root, "grading")]


def build_cfg(*overrides: str) -> BuildConfig:
    return compose("kaggle_build", list(overrides), BuildConfig)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory, fake_runs) -> Path:
    out = tmp_path_factory.mktemp("kaggle") / "out"
    runs = ",".join(str(r) for r in fake_runs)
    build(build_cfg(f"runs=[{runs}]", f"out={out}", "user=tester", *SMALL_BUNDLE))
    return out


# --------------------------------------------------------------------------------------------------------------
# the build's outputs


def test_build_code_dataset(small_build: Path):
    code = small_build / "code"
    wheels = sorted(p.name for p in code.glob("*.whl"))
    names = {W.parse_wheel_name(w)[0] for w in wheels}
    assert names == {"spine", "hydra-core", "omegaconf", "antlr4-python3-runtime", "packaging"}
    for wheel in code.glob("*.whl"):
        assert W.verify_wheel(wheel) > 2
    meta = json.loads((code / "dataset-metadata.json").read_text())
    assert meta["id"] == "tester/spine-code" and 6 <= len(meta["title"]) <= 50 and meta["licenses"][0]["name"]
    info = json.loads((small_build / "build.json").read_text())
    assert info["complete"] and info["runs"] == ["landmarks", "grading"]
    assert {b["name"] for b in info["bundle"]} == {"hydra-core", "omegaconf", "antlr4-python3-runtime", "packaging"}
    assert "pyyaml" in info["requirements_on_provided"]  # omegaconf's, assumed on Kaggle


def test_project_wheel_carries_configs_and_template(small_build: Path):
    (wheel,) = (small_build / "code").glob("spine-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"spine/__init__.py", "spine/kaggle/template.ipynb", "spine/configs/kaggle_build/kaggle_build.yaml",
            "spine/configs/preprocess/preprocess.yaml"} <= names
    assert "Requires-Dist: timm-3d" in metadata
    assert not any("__pycache__" in n for n in names)


def test_build_weights_dataset(small_build: Path):
    weights = small_build / "weights"
    assert (weights / "runs.txt").read_text().split() == ["landmarks", "grading"]
    files = sorted(p.relative_to(weights / "landmarks").as_posix() for p in (weights / "landmarks").rglob("*")
                   if p.is_file())
    assert files == ["calibration.json", "config.yaml", "fold0/config.yaml", "fold0/model.json",
                     "fold0/model.safetensors", "fold0/run.json", "metrics.json"]
    manifest = json.loads((weights / "manifest.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == ["landmarks", "grading"]
    assert all(len(f["sha256"]) == 64 for r in manifest["runs"] for f in r["files"])
    meta = json.loads((weights / "dataset-metadata.json").read_text())
    assert meta["id"] == "tester/spine-weights"


def test_build_notebook(small_build: Path):
    import nbformat

    nb = nbformat.read(small_build / "inference.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 4 and not any("{{" in c for c in code)
    for source in code:
        compile(source, "<cell>", "exec")
    assert '"/kaggle/input"' in code[0] and '"spine-code"' in code[0] and '"spine-weights"' in code[0]
    assert '"rsna-2024-lumbar-spine-degenerative-classification"' in code[0]
    assert '"/kaggle/working/submission.csv"' in code[0] and "SPINE_CODE_DIR" in code[0]
    assert '"--no-index", "--find-links", CODE_DIR' in code[1] and "sys.executable" in code[1]
    assert '"spine.predict"' in code[2] and "runs.txt" in code[2]
    kernel = json.loads((small_build / "kernel-metadata.json").read_text())
    assert kernel["dataset_sources"] == ["tester/spine-code", "tester/spine-weights"]
    assert kernel["enable_internet"] is False and kernel["code_file"] == "inference.ipynb"
    readme = (small_build / "README.md").read_text()
    assert "kaggle datasets create -p" in readme and "--dir-mode zip" in readme


def test_notebook_override_quoting():
    """The notebook's override() leaves plain paths alone and quotes the rest for Hydra/OmegaConf."""
    from omegaconf import OmegaConf

    from spine.kaggle.notebook import render

    nb = render({"CODE_DATASET": "c-c", "WEIGHTS_DATASET": "w-w", "COMPETITION": "comp", "PREDICT_ARGS": ["a=1"]})
    cell = "".join(nb["cells"][3]["source"])
    namespace: dict = {}
    exec(cell.split("with open(")[0], namespace)  # the two helper functions
    override = namespace["override"]
    assert override("/kaggle/input/x-y/run_1") == "/kaggle/input/x-y/run_1"
    odd = ["/a b/it's", "/c,d=e"]
    text = "runs=[" + ",".join(override(v) for v in odd) + "]"
    assert OmegaConf.to_container(OmegaConf.from_dotlist([text]))["runs"] == odd
    assert "PREDICT_ARGS = [\"a=1\"]" in "".join(nb["cells"][1]["source"])


def test_repacked_wheel_installs_and_imports(small_build: Path, tmp_path: Path):
    code = small_build / "code"
    target = tmp_path / "target"
    wheels = [str(p) for p in code.glob("*.whl")
              if W.parse_wheel_name(p.name)[0] in ("omegaconf", "antlr4-python3-runtime")]
    assert len(wheels) == 2
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
                    "--quiet", "--target", str(target), *wheels],
                   check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    probe = "import omegaconf, antlr4, importlib.metadata as m; print(omegaconf.__file__); print(antlr4.__file__); " \
            "print(m.version('omegaconf'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)}).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in out[:2])
    assert out[2] == md.version("omegaconf")
    # antlr4's pygrun is a plain script (not an entry point): it travels in .data/scripts with a neutral shebang
    assert (target / "bin" / "pygrun").is_file()


def test_verify_wheel_detects_tampering(small_build: Path, tmp_path: Path):
    (wheel,) = (small_build / "code").glob("omegaconf-*.whl")
    bad = tmp_path / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"#" if item.filename.endswith("omegaconf/version.py") else data)
    with pytest.raises(W.WheelError, match="does not match"):
        W.verify_wheel(bad)


# --------------------------------------------------------------------------------------------------------------
# pieces


def test_default_bundle_resolution():
    """What the default build bundles for spine's own requirements: everything but the Kaggle image's staples."""
    res = W.resolve_bundle(md.distribution("spine").requires or [], DEFAULT_PROVIDED)
    bundled = set(res.bundle)
    assert {"timm-3d", "torchio", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "simpleitk",
            "nibabel", "hydra-core", "omegaconf", "antlr4-python3-runtime", "safetensors", "timm"} <= bundled
    assert not bundled & {"torch", "torchvision", "numpy", "scipy", "pandas", "scikit-learn", "matplotlib",
                          "pytest", "nbclient", "ipykernel", "spine"}
    assert not any(n.startswith("nvidia-") for n in bundled)
    assert "torch" in res.provided and any("spine" in e for e in res.provided["torch"])


def test_wheel_tags_and_compatibility():
    text = "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-abi3-manylinux_2_17_x86_64\n" \
           "Tag: cp311-abi3-manylinux2014_x86_64\n"
    assert W._wheel_tags(text) == "cp311-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64"
    assert W._wheel_tags("Tag: py2-none-any\nTag: py3-none-any\n") == "py2.py3-none-any"
    assert W.compatible_with("py3-none-any", "3.10")
    assert W.compatible_with("cp310-abi3-manylinux2014_x86_64", "3.12")
    assert not W.compatible_with("cp311-abi3-manylinux2014_x86_64", "3.10")
    assert not W.compatible_with("cp311-cp311-manylinux2014_x86_64", "3.10")
    assert W.is_pure(md.distribution("omegaconf")) and not W.is_pure(md.distribution("safetensors"))


def test_select_files_include_exclude(fake_runs):
    copied, skipped = select_files(fake_runs[0], DEFAULT_INCLUDE, DEFAULT_EXCLUDE)
    assert Path("fold0/model.safetensors") in copied
    for name in ("fold0/checkpoint.pt", "fold0/last.safetensors", "fold0/tb/events.out.tfevents.1",
                 "fold0/val_epoch001.png", "oof.csv", "test.csv", "fold0/metrics.csv"):
        assert Path(name) in skipped


def test_download_command_and_python_version():
    cfg = build_cfg("runs=[x]", "wheels=download", "python_version=3.10")
    assert cfg.python_version == "3.10"  # YAML reads 3.10 as 3.1
    cmd = W.download_command(["wrapt==2.0"], Path("/tmp/x"), cfg.python_version, cfg.platforms)
    joined = " ".join(cmd)
    assert "--only-binary=:all: --no-deps" in joined and "--python-version 3.10" in joined
    assert "--abi cp310" in joined and "--platform manylinux_2_17_x86_64" in joined and cmd[-1] == "wrapt==2.0"


def test_cli_errors(tmp_path: Path, fake_runs, capsys):
    assert main(["build"]) == 1
    assert "runs=[...] is required" in capsys.readouterr().err
    for bad in (["build", "runs=[x]", "wheels=bogus"], ["selftest"]):  # selftest: data_dir is required
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2
    assert main(["frobnicate"]) == 2
    assert main(["build", f"runs=[{tmp_path}]"]) == 1  # not a run folder
    assert "no config.yaml" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main(["build", f"runs=[{fake_runs[0]}]", f"out={foreign}"]) == 1
    assert "not overwriting" in capsys.readouterr().err and (foreign / "keep.txt").exists()


def test_selftest_rejects_a_missing_build(tmp_path: Path):
    from spine.kaggle.selftest import SelftestError, selftest

    with pytest.raises(SelftestError, match="no build.json"):
        selftest(compose("kaggle_selftest", [f"build={tmp_path}", f"data_dir={tmp_path}"], SelftestConfig))


# --------------------------------------------------------------------------------------------------------------
# end to end: a fresh venv, the notebook executed headless, spine installed from the bundle


STUB_PREDICT = '''"""Stand-in for spine.predict (tests/test_kaggle.py): the uniform submission of the studies."""
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from spine.baselines import uniform_submission

cfg = OmegaConf.from_dotlist(sys.argv[1:])
assert all((Path(run) / "config.yaml").is_file() for run in cfg.runs), cfg.runs
studies = pd.read_csv(Path(cfg.data_dir) / "test_series_descriptions.csv")["study_id"]
uniform_submission(studies).to_csv(cfg.out, index=False)
print("stub predict wrote", cfg.out)
'''


def stub_project(root: Path) -> Path:
    """A copy of the project whose spine.predict is a stub: the packaging machinery tested on its own."""
    root.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "spine", root / "spine", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "spine" / "predict").mkdir(exist_ok=True)
    (root / "spine" / "predict" / "__init__.py").touch()
    (root / "spine" / "predict" / "__main__.py").write_text(STUB_PREDICT)
    return root


def tiny_test_split(root: Path) -> Path:
    """test_series_descriptions.csv, an empty test_images/ and labels for two studies (the stub reads no image)."""
    import pandas as pd

    from spine.constants import CONDITIONS, LEVELS, label_column

    root.mkdir()
    (root / "test_images").mkdir()
    pd.DataFrame({"study_id": [11, 11, 22], "series_id": [1, 2, 3],
                  "series_description": ["Sagittal T1", "Axial T2", "Sagittal T1"]}).to_csv(
        root / "test_series_descriptions.csv", index=False)
    labels = {label_column(c, lv): "Normal/Mild" for c in CONDITIONS for lv in LEVELS}
    pd.DataFrame([{"study_id": s, **labels} for s in (11, 22)]).to_csv(root / "test_labels.csv", index=False)
    return root


@pytest.mark.slow
def test_selftest_with_stub_predict(tmp_path: Path, fake_runs):
    """The whole bundle path with a stub predictor: build -> fake /kaggle -> venv -> notebook -> pip install
    --no-index from code/ -> submission -> score. Everything spine needs is 'preinstalled' except the small
    hydra-core closure, which the notebook must install from the bundle."""
    from spine.kaggle.selftest import selftest

    project = stub_project(tmp_path / "project")
    data = tiny_test_split(tmp_path / "data")
    heavy = ["timm", "timm-3d", "torchio", "pydicom", "pylibjpeg*", "simpleitk", "nibabel", "safetensors", "tqdm",
             "packaging", "importlib-resources", "typing-extensions", "rich", "typer", "deprecated", "einops",
             "humanize", "jaxtyping"]
    provided = "provided=[" + ",".join(DEFAULT_PROVIDED + heavy) + "]"
    runs = ",".join(str(r) for r in fake_runs)
    out = tmp_path / "out"
    build(build_cfg(f"runs=[{runs}]", f"out={out}", f"project={project}", provided, "threads=1"))
    info = json.loads((out / "build.json").read_text())
    assert {b["name"] for b in info["bundle"]} == {"hydra-core", "omegaconf", "antlr4-python3-runtime"}

    result = selftest(compose("kaggle_selftest", [f"build={out}", f"data_dir={data}", f"work={tmp_path / 'work'}"],
                              SelftestConfig))
    assert result.rows == 50 and result.studies == 2
    assert result.from_bundle == ["antlr4-python3-runtime", "hydra-core", "omegaconf"]
    assert result.score is not None and result.score["score"] > 0
    venv_site = next((tmp_path / "work" / "venv" / "lib").glob("python*/site-packages"))
    assert (venv_site / "spine" / "predict" / "__main__.py").read_text() == STUB_PREDICT
    assert not (venv_site / "torch").exists()  # torch came from the fake image


@pytest.mark.slow
def test_selftest_end_to_end(tmp_path: Path, request):
    """The real thing on the tiny preset: trained runs -> build (default bundle) -> selftest with spine-predict."""
    from spine.kaggle.selftest import selftest

    runs = request.getfixturevalue("tiny_runs")
    tiny_dataset = request.getfixturevalue("tiny_dataset")
    out = tmp_path / "out"
    build(build_cfg("runs=[" + ",".join(str(r) for r in runs) + "]", f"out={out}"))
    result = selftest(compose("kaggle_selftest", [f"build={out}", f"data_dir={tiny_dataset}",
                                                  f"work={tmp_path / 'work'}"], SelftestConfig))
    assert result.rows == 25 * result.studies
    assert result.score is not None and 0 < result.score["score"] < 10
    assert "spine" not in result.preinstalled and "timm-3d" in result.from_bundle


def test_preinstalled_links_share_folders(tmp_path: Path):
    """The fake image links a whole folder unless a hidden distribution has files in it, then file by file."""
    from spine.kaggle.selftest import _place

    site, out = tmp_path / "site", tmp_path / "out"
    for rel in ("ns/shown.py", "ns/hidden.py", "pkg/__init__.py", "mod.py"):
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text("")
    out.mkdir()
    shown = {("ns", "shown.py"), ("pkg", "__init__.py"), ("mod.py",)}
    hidden = {("ns",), ("ns", "hidden.py")}
    for top in sorted({f[:1] for f in shown}):
        _place(top, site, out, shown, hidden)
    assert (out / "pkg").is_symlink() and (out / "mod.py").is_symlink()
    assert not (out / "ns").is_symlink() and (out / "ns" / "shown.py").is_symlink()
    assert not (out / "ns" / "hidden.py").exists()


def test_kaggle_freeze_check(tmp_path: Path):
    """kaggle_freeze: requirements on the image that its versions do not meet, and assumed packages it lacks."""
    from spine.kaggle.build import check_freeze, read_freeze

    freeze = tmp_path / "freeze.txt"
    freeze.write_text("numpy==1.26.4\ntorch==2.4.0+cu121\nPyYAML==6.0.2\nsome-pkg @ file:///tmp/x\n")
    res = W.Resolution(provided={"numpy": ["numpy<3.0,>=2.0 (pylibjpeg-libjpeg)", "numpy>=1.24 (spine)"],
                                 "torch": ["torch>=2.1 (spine)"], "pyyaml": ["PyYAML>=5.1.0 (omegaconf)"],
                                 "scipy": ["scipy>=1.10 (spine)"]})
    versions = read_freeze(str(freeze))
    assert versions["pyyaml"] == "6.0.2" and versions["some-pkg"] == ""
    problems = check_freeze(res, versions)
    assert len(problems) == 2
    assert "numpy<3.0,>=2.0 (pylibjpeg-libjpeg) but Kaggle has numpy 1.26.4" in problems
    assert any(p.startswith("scipy is assumed preinstalled") for p in problems)
