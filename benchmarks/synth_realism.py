"""How close the synthetic studies are to the real data, in numbers.

    python benchmarks/synth_realism.py [--studies N] [--plans N] [--generate N] [--work DIR] [--baseline]
                                       [DATA_DIR ...]

Prints
(1) label frequencies from 5000 simulated studies (--studies; labels only, no images) against the real data's
    overall 77/16/6 %, per condition and level;
(2) the realism table: each figure of the real training set (1,975 studies) against the generator, measured on
    --plans study plans of the ``realistic`` preset (everything but the pixels: series, files, tags, labels,
    anatomy; fast) and on the files of the generated dataset (--generate studies of the ``small`` preset,
    written and preprocessed with ``python -m spine.preprocess ... split=train workers=2``), with the trivial
    baselines: centre-offset level identification (every label point at its mean offset from the Sagittal T2
    volume centre, 5 folds of the cache: ``benchmarks/landmarks.py`` ``centre_baseline``; target at most 40 %)
    and the class prior against the oracle on the test studies (the competition metric);
(3) for each DATA_DIR given: slice counts, steps and sizes per series type, and the scores of the oracle, the
    class prior and the uniform submission; with --baseline also its realism column and centre baseline
    (preprocessed into --work). Without DATA_DIR the default run is --plans 1000 --generate 60 (a few minutes
    on 2 cores); with DATA_DIRs both default to 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spine.baselines import class_prior_submission
from spine.constants import CONDITIONS, LABEL_COLUMNS, LEVELS, SEVERITIES
from spine.metric import score
from spine.synth import labels as label_model

REAL_OVERALL = (0.77, 0.16, 0.06)
SERIES_TYPES = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")
# The real training set (1,975 studies, 147,218 DICOM files): issue 13.
REAL = {
    "series per study: 2 / 3 / 4 / 5 (%)": "0.15 / 82.7 / 15.7 / 1.5",
    "studies without Sagittal T1 / T2/STIR / Axial T2 (%)": "0.10 / 0.05 / 0",
    "files per Axial T2 series: min-max (99th pct)": "15-192 (68)",
    "files per Sagittal T1 series: min-max (median)": "10-38",
    "files per Sagittal T2/STIR series: min-max (median)": "8-29",
    "files with RescaleSlope/Intercept (%)": "about 18",
    "studies lacking some of the 25 labels (%)": "about 10",
    "missing labels at L5/S1 (%)": "most",
    "labels Normal/Mild / Moderate / Severe (%)": "77 / 16 / 6",
    "transitional anatomy, 4 or 6 lumbar-type vertebrae (%)": "about 10",
    "scoliosis / anterolisthesis (%)": "some / some",
    "sagittal centre from L3/L4 disc, p10 / p50 / p90 (mm, + cranial)": "over several levels",
    "centre-offset level identification (%)": "target <= 40 (v1: 96)",
    "score: oracle / class prior (test studies)": "-",
}


def label_frequencies(n_studies: int = 5000, sigma: float = 0.10, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grades = {c: [] for c in CONDITIONS}
    for _ in range(n_studies):
        narrowing = label_model.sample_narrowing(rng)
        for c in CONDITIONS:
            grades[c].append(label_model.read_label(narrowing[c], sigma, rng))
    rows = []
    for c in CONDITIONS:
        g = np.stack(grades[c])
        for li, lv in enumerate(LEVELS):
            freq = np.bincount(g[:, li], minlength=3) / len(g)
            rows.append({"condition": c, "level": lv, **dict(zip(SEVERITIES, freq.round(3)))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ measurements
def _pct(x: float) -> str:
    return f"{100 * x:.1f}" if np.isfinite(x) else "-"


def realism_column(series: pd.DataFrame, labels: pd.DataFrame, facts: pd.DataFrame | None) -> dict[str, str]:
    """The generator's value of each row of the realism table.

    series: one row per series (study_id, description, files, rescale); labels: train.csv-format rows (every
    split); facts: studies.csv rows (anatomy), or None."""
    out: dict[str, str] = {}
    per_study = series.groupby("study_id").size()
    counts = per_study.value_counts(normalize=True)
    out["series per study: 2 / 3 / 4 / 5 (%)"] = " / ".join(_pct(counts.get(k, 0.0)) for k in (2, 3, 4, 5))
    has = series.groupby("study_id").description.agg(set)
    out["studies without Sagittal T1 / T2/STIR / Axial T2 (%)"] = " / ".join(
        _pct(float(np.mean([d not in s for s in has]))) for d in SERIES_TYPES)
    for description, key in (("Axial T2", "files per Axial T2 series: min-max (99th pct)"),
                             ("Sagittal T1", "files per Sagittal T1 series: min-max (median)"),
                             ("Sagittal T2/STIR", "files per Sagittal T2/STIR series: min-max (median)")):
        files = series.loc[series.description == description, "files"]
        extra = np.percentile(files, 99) if description == "Axial T2" else np.median(files)
        out[key] = f"{files.min()}-{files.max()} ({extra:.0f})" if len(files) else "-"
    out["files with RescaleSlope/Intercept (%)"] = _pct(series.files[series.rescale].sum() / series.files.sum())
    grid = labels[list(LABEL_COLUMNS)]
    missing = grid.isna()
    out["studies lacking some of the 25 labels (%)"] = _pct(float(missing.any(axis=1).mean()))
    at_l5 = missing[[c for c in LABEL_COLUMNS if c.endswith("l5_s1")]].to_numpy().sum()
    out["missing labels at L5/S1 (%)"] = _pct(at_l5 / missing.to_numpy().sum()) if missing.to_numpy().any() else "-"
    values = grid.stack().dropna()
    out["labels Normal/Mild / Moderate / Severe (%)"] = " / ".join(
        _pct(float((values == s).mean())) for s in SEVERITIES)
    if facts is not None:
        out["transitional anatomy, 4 or 6 lumbar-type vertebrae (%)"] = _pct(float((facts.n_lumbar != 5).mean()))
        out["scoliosis / anterolisthesis (%)"] = (f"{_pct(float((facts.cobb_deg > 0).mean()))} / "
                                                  f"{_pct(float(facts.listhesis_level.notna().mean()))}")
        centre = facts.sagittal_centre_mm.dropna()
        out["sagittal centre from L3/L4 disc, p10 / p50 / p90 (mm, + cranial)"] = " / ".join(
            f"{v:.0f}" for v in np.percentile(centre, [10, 50, 90]))
    return out


def plan_frames(n_studies: int, seed: int = 0, preset: str = "realistic",
                workers: int = 2) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    """(series, labels, facts) of ``n_studies`` study plans (no pixels), and the centre-offset level-ID computed
    on them (half the studies give the mean offsets, the other half are judged; exact label points)."""
    from concurrent.futures import ProcessPoolExecutor

    from spine.cli import compose
    from spine.synth.config import SynthConfig
    from spine.synth.generate import study_jobs

    cfg = compose("synth", [f"preset={preset}", f"seed={seed}", f"n_train={n_studies}", "n_test=0",
                            "out_dir=unused"], SynthConfig)
    jobs = study_jobs(cfg)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_plan_rows, jobs, chunksize=8))
    else:
        rows = [_plan_rows(job) for job in jobs]
    series = pd.DataFrame([s for r in rows for s in r[0]])
    labels = pd.DataFrame([r[1] for r in rows])
    facts = pd.DataFrame([r[2] for r in rows]).replace({"listhesis_level": {"": None}})
    offsets = np.array([r[3] for r in rows if r[3] is not None])  # (n, 5 conditions, 5 levels, 3)
    return series, labels, facts, _offset_level_id(offsets)


def _plan_rows(job):
    from spine.synth.generate import plan_study

    cfg, study_id, series_ids, split, seed = job
    plan = plan_study(cfg, study_id, series_ids, split, np.random.default_rng(seed))
    series = [{"study_id": study_id, "description": s.description, "files": s.plan.n_files,
               "rescale": s.rescale is not None} for s in plan.series]
    t2 = [s for s in plan.series if s.description == "Sagittal T2/STIR"]
    offsets = None
    if t2:
        centre = t2[0].plan.stacks[0].centers.mean(axis=0)
        offsets = np.array([[plan.spine.label_point(c, li) for li in range(len(LEVELS))] for c in CONDITIONS])
        offsets = offsets - centre
    return series, plan.labels, plan.facts, offsets


def _offset_level_id(offsets: np.ndarray) -> float:
    """Share of points nearer to their own level than to a neighbouring level, predicted at the mean offset."""
    if len(offsets) < 4:
        return float("nan")
    half = len(offsets) // 2
    mean = offsets[:half].mean(axis=0)  # (condition, level, 3)
    judged = offsets[half:]
    own = np.linalg.norm(judged - mean[None], axis=-1)
    correct = []
    for li in range(len(LEVELS)):
        nearest = np.full(own.shape[:2], np.inf)
        for lj in (li - 1, li + 1):
            if 0 <= lj < len(LEVELS):
                nearest = np.minimum(nearest, np.linalg.norm(judged[:, :, lj] - mean[None, :, li], axis=-1))
        correct.append(own[:, :, li] < nearest)
    return float(np.mean(correct))


def dataset_frames(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(series, labels, facts) of a written dataset: files counted on disk, rescale tags read from each series'
    first file."""
    import pydicom

    rows = []
    for split in ("train", "test"):
        listing = data_dir / f"{split}_series_descriptions.csv"
        if not listing.is_file():
            continue
        for row in pd.read_csv(listing).itertuples():
            files = sorted((data_dir / f"{split}_images" / str(row.study_id) / str(row.series_id)).glob("*.dcm"))
            rescale = False
            if files:
                header = pydicom.dcmread(files[0], stop_before_pixels=True)
                rescale = "RescaleSlope" in header or "RescaleIntercept" in header
            rows.append({"study_id": row.study_id, "description": row.series_description, "files": len(files),
                         "rescale": rescale})
    labels = pd.concat([pd.read_csv(data_dir / name) for name in ("train.csv", "test_labels.csv")
                        if (data_dir / name).is_file()], ignore_index=True)
    facts = pd.read_csv(data_dir / "studies.csv") if (data_dir / "studies.csv").is_file() else None
    return pd.DataFrame(rows), labels, facts


# ------------------------------------------------------------------------------------ baselines on a cache
def _landmarks_module():
    path = Path(__file__).resolve().parent / "landmarks.py"
    spec = importlib.util.spec_from_file_location("bench_landmarks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preprocess(data_dir: Path, cache_dir: Path) -> Path:
    """``python -m spine.preprocess data_dir=... cache_dir=... split=train workers=2`` (once)."""
    if not any(cache_dir.glob("*/series.csv")):
        subprocess.run([sys.executable, "-m", "spine.preprocess", f"data_dir={data_dir}", f"cache_dir={cache_dir}",
                        "split=train", "workers=2", "progress=false"], check=True, capture_output=True)
    return cache_dir


def centre_baseline_metrics(cache_dir: Path, series: str = "Sagittal T2/STIR") -> dict:
    """Level-ID and error of the centre-offset baseline (5 folds of the cache's folds.csv), and the share of label
    points outside the default landmark grid (`GridConfig`, centred on the volume)."""
    from spine.cache import Cache
    from spine.evaluate import landmark_metrics, truth_frame
    from spine.run_config import GridConfig

    cache = Cache.open(cache_dir)
    oof = cache.folds[["study_id", "fold"]]
    baseline = _landmarks_module().centre_baseline(cache, oof, series)
    truth = truth_frame(cache.coordinates)
    metrics = landmark_metrics(baseline, truth)
    grid = GridConfig()
    half = np.asarray(grid.size) * np.asarray(grid.spacing_mm) / 2  # mm along world x, y, z
    outside = []
    for study, rows in truth.groupby("study_id"):
        ids = cache.series_of(int(study), series)
        if not ids:
            continue
        centre = cache.load_volume(int(study), ids[0]).centre
        offset = np.abs(rows[["true_x", "true_y", "true_z"]].to_numpy() - centre)
        outside.extend((offset > half).any(axis=1))
    metrics["outside_grid"] = float(np.mean(outside)) if outside else float("nan")
    metrics["grid_mm"] = (2 * half).tolist()
    return metrics


def scores(data_dir: Path) -> dict[str, float]:
    labels = pd.read_csv(data_dir / "test_labels.csv")
    if labels.empty:
        return {}
    train = pd.read_csv(data_dir / "train.csv")
    subs = {"oracle": pd.read_csv(data_dir / "oracle_submission.csv"),
            "class prior": class_prior_submission(train, labels.study_id),
            "uniform": pd.read_csv(data_dir / "sample_submission.csv")}
    return {name: score(labels, sub)["score"] for name, sub in subs.items()}


def dataset_report(data_dir: Path) -> None:
    card = json.loads((data_dir / "dataset.json").read_text())
    version = card.get("generator_version", 1)
    print(f"\n== {data_dir} (generator version {version}, preset {card['config']['preset']}, {card['studies']}, "
          f"generated in {card['seconds']} s)")
    print(pd.DataFrame(card["series"]).to_string(index=False))
    labels = pd.read_csv(data_dir / "test_labels.csv")
    train = pd.read_csv(data_dir / "train.csv")
    subs = {"oracle": pd.read_csv(data_dir / "oracle_submission.csv"),
            "class prior": class_prior_submission(train, labels.study_id),
            "uniform": pd.read_csv(data_dir / "sample_submission.csv")}
    table = pd.DataFrame({name: score(labels, sub) for name, sub in subs.items()}).T.round(4)
    print(table.to_string())


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (no tabulate needed)."""
    cells = [list(table.columns)] + table.astype(str).values.tolist()
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(cells[0]))]
    line = lambda row: "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def generate_small(out: Path, n_studies: int, seed: int) -> Path:
    from spine.cli import compose
    from spine.synth.config import SynthConfig
    from spine.synth.generate import generate

    if not (out / "dataset.json").is_file():
        n_test = max(1, n_studies // 5)
        generate(compose("synth", ["preset=small", f"seed={seed}", f"n_train={n_studies - n_test}",
                                   f"n_test={n_test}", f"out_dir={out}", "overwrite=true", "workers=2"], SynthConfig))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/synth_realism.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dirs", nargs="*", type=Path, metavar="DATA_DIR",
                        help="generated datasets (python -m spine.synth) to report on")
    parser.add_argument("--studies", type=int, default=5000, help="simulated studies for the label frequencies "
                        "(default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated labels and studies (default 0)")
    parser.add_argument("--plans", type=int, default=None, help="study plans (no pixels) for the realism table "
                        "(default 1000 without DATA_DIR, else 0)")
    parser.add_argument("--generate", type=int, default=None, help="small-preset studies to write and preprocess "
                        "for the files column and the baselines (default 60 without DATA_DIR, else 0)")
    parser.add_argument("--work", type=Path, default=None, help="folder for generated data and caches "
                        "(default: a temporary folder)")
    parser.add_argument("--baseline", action="store_true", help="also preprocess each DATA_DIR (into --work) for "
                        "its realism column and centre baseline")
    args = parser.parse_args(argv)
    if args.studies < 1:
        parser.error(f"--studies must be at least 1, got {args.studies}")
    missing = [str(d) for d in args.data_dirs if not (d / "dataset.json").is_file()]
    if missing:
        parser.error(f"not a generated dataset (no dataset.json): {', '.join(missing)}")
    if args.plans is None:
        args.plans = 0 if args.data_dirs else 1000
    if args.generate is None:
        args.generate = 0 if args.data_dirs else 60
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    freq = label_frequencies(args.studies, seed=args.seed)
    overall = freq[list(SEVERITIES)].mean().round(3).to_dict()
    print(f"label frequencies, {args.studies} simulated studies: overall {overall} (real data about {REAL_OVERALL})")
    print(freq.to_string(index=False))
    work = args.work or Path(tempfile.mkdtemp(prefix="synth_realism_"))
    columns: dict[str, dict[str, str]] = {}
    if args.plans:
        series, labels, facts, level_id = plan_frames(args.plans, args.seed)
        column = realism_column(series, labels, facts)
        column["centre-offset level identification (%)"] = _pct(level_id)
        columns[f"generator: {args.plans} plans (realistic)"] = column
        print(f"[realism] {args.plans} study plans in {time.perf_counter() - started:.0f} s", flush=True)
    datasets = []
    if args.generate:
        datasets.append(generate_small(work / f"small_{args.generate}", args.generate, args.seed))
    if args.baseline:
        datasets += list(args.data_dirs)
    for data in datasets:
        column = realism_column(*dataset_frames(data))
        cache = preprocess(data, work / f"cache_{data.name}")
        metrics = centre_baseline_metrics(cache)
        column["centre-offset level identification (%)"] = (
            f"{_pct(metrics['level_acc'])} (median error {metrics['median_mm']:.0f} mm; "
            f"{_pct(metrics['outside_grid'])} % of points outside the {metrics['grid_mm'][2]:.0f} mm landmark grid)")
        result = scores(data)
        if result:
            column["score: oracle / class prior (test studies)"] = (f"{result['oracle']:.3f} / "
                                                                    f"{result['class prior']:.3f}")
        card = json.loads((data / "dataset.json").read_text())
        name = f"generator v{card.get('generator_version', 1)}: {sum(card['studies'].values())} studies"
        columns[f"{name} ({data.name}, files)"] = column
        print(f"[realism] {data}: done at {time.perf_counter() - started:.0f} s", flush=True)
    if columns:
        table = pd.DataFrame({"figure": list(REAL), "real": list(REAL.values()),
                              **{name: [c.get(k, "-") for k in REAL] for name, c in columns.items()}})
        print("\nrealism table (generator against the real training set):\n")
        print(markdown(table))
    for d in args.data_dirs:
        dataset_report(d)
    print(f"\n[realism] {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
