"""Typed configuration of ``python -m spine.kaggle build`` and ``python -m spine.kaggle selftest``.

YAML: ``configs/kaggle_build/kaggle_build.yaml`` and ``configs/kaggle_selftest/kaggle_selftest.yaml``. Why the
default bundle and ``provided`` lists are what they are: docs/kaggle.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

WHEEL_MODES = ("installed", "download")
COMPETITION = "rsna-2024-lumbar-spine-degenerative-classification"

# Distributions assumed preinstalled on the Kaggle image: never bundled, and their own dependencies are not
# followed (they come with them). Globs on canonical names (lower case, '-'). torch/torchvision are huge and
# must match Kaggle's CUDA; the numeric stack is compiled against the image's other packages and must not be
# replaced. Anything else is bundled, even where the image surely has it (typing-extensions, packaging,
# tqdm): pip installs a bundled wheel only when the image lacks the package or has a version outside the
# requirements, so bundling costs a few kB and saves a failed offline install.
DEFAULT_PROVIDED = [
    "torch", "torchvision", "torchaudio", "triton", "nvidia-*", "cuda-*",  # huge, matched to Kaggle's CUDA
    "numpy", "scipy", "pandas", "scikit-learn", "matplotlib", "pillow", "pyyaml",  # compiled, ABI-coupled
    "huggingface-hub",  # timm's; on the image with transformers (bundling it would pull in its HTTP stack)
    "pip", "setuptools", "wheel",
]

# Which files of a run folder go into the weights dataset: a file is copied when its name matches an
# ``include`` glob and no part of its path (a folder or the file name) matches an ``exclude`` glob.
DEFAULT_INCLUDE = ["*.yaml", "*.yml", "*.json", "*.safetensors", "*.csv", "*.txt", "*.npy", "*.npz"]
DEFAULT_EXCLUDE = [
    "checkpoint.pt", "last*.safetensors", "*.tmp", "tb", "__pycache__", ".*",
    "*.png", "*.jpg", "oof*.csv", "test*.csv", "submission*.csv", "*.log.csv", "metrics.csv",
]

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,48}[A-Za-z0-9]$")


@dataclass
class BuildConfig:
    runs: list[str] = field(default_factory=list)  # run folders, in the order spine-predict takes them
    out: str = "dist/kaggle"  # written: code/, weights/, inference.ipynb, README.md, build.json
    wheels: str = "installed"  # installed: repack this environment's dists (offline) | download: pip download
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))  # run files to copy (globs)
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))  # ... and to leave out
    bundle: list[str] = field(default_factory=list)  # requirement roots; empty = the project's dependencies
    extra: list[str] = field(default_factory=list)  # more requirements to bundle (e.g. [einops])
    provided: list[str] = field(default_factory=lambda: list(DEFAULT_PROVIDED))  # on the Kaggle image
    user: str = ""  # Kaggle user name: the owner in the dataset and notebook ids
    code_dataset: str = "spine-code"  # dataset slug of code/ (mounted at /kaggle/input/<slug>)
    weights_dataset: str = "spine-weights"  # dataset slug of weights/
    notebook: str = "spine-inference"  # notebook (kernel) slug in kernel-metadata.json
    competition: str = COMPETITION  # competition slug: the notebook's data source (/kaggle/input/<slug>)
    license: str = "other"  # dataset license name (Kaggle's list: CC0-1.0, other, ...)
    gpu: bool = True  # kernel-metadata.json: enable_gpu
    predict_args: list[str] = field(default_factory=list)  # extra spine-predict overrides in the notebook
    python_version: str = "3.11"  # Kaggle's Python (wheels=download; a warning when it differs here)
    platforms: list[str] = field(default_factory=list)  # wheels=download; empty = manylinux x86_64 <= glibc 2.35
    project: str = ""  # the project source (folder of pyproject.toml); empty = where spine is imported from
    kaggle_freeze: str = ""  # `pip list --format=freeze` of a Kaggle notebook: check `provided` against it
    threads: int = 2  # wheels repacked in parallel (zlib runs outside the GIL)

    def __post_init__(self) -> None:
        if self.wheels not in WHEEL_MODES:
            raise ValueError(f"wheels must be one of {', '.join(WHEEL_MODES)}, got {self.wheels!r}")
        for key in ("code_dataset", "weights_dataset", "notebook"):
            if not _SLUG.match(getattr(self, key)):
                raise ValueError(f"{key} must be a Kaggle slug (3-50 letters, digits, '-', '_'), got "
                                 f"{getattr(self, key)!r}")
        if self.user and not _SLUG.match(self.user):
            raise ValueError(f"user must be a Kaggle user name, got {self.user!r}")
        if self.code_dataset == self.weights_dataset:
            raise ValueError("code_dataset and weights_dataset must differ")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        # YAML reads python_version=3.10 as the number 3.1: Python 3.1-3.3 are no target, so 3.1 means 3.10
        self.python_version = str(self.python_version)
        if re.fullmatch(r"3\.[123]", self.python_version):
            self.python_version += "0"
        if not re.fullmatch(r"3\.\d+", self.python_version) or int(self.python_version[2:]) < 10:
            raise ValueError(f"python_version must look like 3.11 (and be >= 3.10), got {self.python_version!r}")


@dataclass
class SelftestConfig:
    build: str = "dist/kaggle"  # the out folder of `python -m spine.kaggle build`
    data_dir: str = ""  # RSNA-layout folder with test_series_descriptions.csv, test_images/ (and test_labels.csv)
    labels: str = ""  # labels to score against; empty = <data_dir>/test_labels.csv when it exists
    work: str = ""  # where the fake /kaggle tree and the venv go; empty = a temporary folder
    keep: bool = False  # keep a temporary work folder (a given `work` is always kept)
    python: str = ""  # interpreter of the new venv (this Python's version); empty = this one's base interpreter
    timeout: int = 3600  # seconds per notebook cell
    check_imports: bool = True  # import every top-level module of the bundled dists in the new venv

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ValueError("data_dir is required: an RSNA-layout folder with the test split")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
