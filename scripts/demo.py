"""The end-to-end demo: synthetic data -> (preprocess -> landmarks -> grading -> submission) -> score -> run report.

Run through ``scripts/demo.sh`` (which sets up .venv). Every step calls the project's public command line,
exactly as a user would, and prints the command before running it. Outputs go under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(step: str, command: list[str]) -> None:
    """Run one pipeline step, echoing it; stop the demo with the step's exit code if it fails."""
    print(f"\n=== {step}\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"[demo] step '{step}' failed with exit code {result.returncode}", file=sys.stderr)
        raise SystemExit(result.returncode)
    print(f"[demo] {step}: {time.perf_counter() - started:.1f} s", flush=True)


def score(name: str, submission: Path, labels: Path) -> dict:
    out = subprocess.run([str(BIN / "spine-score"), str(submission), "--labels", str(labels), "--json"],
                         capture_output=True, text=True, check=True)
    return {"name": name, **json.loads(out.stdout)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--preset", default="small", help="synthetic preset: tiny, small or realistic")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    data = out / "data"
    py = sys.executable

    run("1. synthetic studies in the RSNA layout",
        [py, "-m", "spine.synth", f"out_dir={data}", f"preset={args.preset}", f"seed={args.seed}", "overwrite=true"])
    run("2. preview of one study", [py, "-m", "spine.synth.preview", f"data_dir={data}", f"out={out / 'preview.png'}"])
    run("3. class-prior baseline submission",
        [py, "-m", "spine.baselines", "prior", "--train", str(data / "train.csv"),
         "--studies", str(data / "test_series_descriptions.csv"), "--out", str(out / "prior_submission.csv")])

    cache = out / "cache"
    run("4. preprocess: DICOM -> acquired stacks (exact geometry), coordinates in pixel/world/voxel frames, folds",
        [py, "-m", "spine.preprocess", f"data_dir={data}", f"cache_dir={cache}", "split=all"])

    # Short schedules on one fold: the tiny preset only checks that the stages run; benchmarks/landmarks.py
    # and benchmarks/quality.py train every fold to the targets.
    tiny = args.preset == "tiny"
    fold = min(int(line.split(",")[1]) for line in next(cache.glob("*/folds.csv")).read_text().splitlines()[1:])
    landmarks, grading = out / "runs" / "landmarks", out / "runs" / "grading"
    run(f"5. landmark stage: where are the five disc levels (fold {fold}, short schedule)",
        [str(BIN / "spine-train"), "stage=landmarks", f"fold={fold}", f"cache_dir={cache}", f"run_dir={landmarks}",
         "overwrite=true", *(["experiment=smoke"] if tiny else ["experiment=bench_cpu"])])
    run(f"6. grading stage: 3 severities x 5 conditions per level, per-condition views at the predicted points "
        f"(fold {fold})",
        [str(BIN / "spine-train"), "stage=grading", f"fold={fold}", f"cache_dir={cache}", f"run_dir={grading}",
         f"landmarks={landmarks}", "overwrite=true",
         *(["experiment=grading_smoke"] if tiny else ["experiment=grading_cpu", "epochs=40", "val_every=20"])])
    submission = out / "submission.csv"
    run("7. spine-predict: DICOM of the test studies -> submission.csv (no cache: volumes built in memory)",
        [str(BIN / "spine-predict"), f"data_dir={data}", f"runs=[{landmarks},{grading}]", f"out={submission}"])

    labels = data / "test_labels.csv"
    rows = [score("uniform 1/3", data / "sample_submission.csv", labels),
            score("class prior", out / "prior_submission.csv", labels),
            score("spine (this demo)", submission, labels),
            score("oracle (best possible)", data / "oracle_submission.csv", labels)]
    print("\n=== scores on the synthetic test studies (competition metric, lower is better)")
    print(f"{'submission':<24}{'score':>8}{'spinal':>9}{'foram.':>9}{'subart.':>9}{'any_sev':>9}")
    for r in rows:
        print(f"{r['name']:<24}{r['score']:>8.4f}{r['spinal']:>9.4f}{r['foraminal']:>9.4f}"
              f"{r['subarticular']:>9.4f}{r['any_severe_spinal']:>9.4f}")
    prior, model, oracle = (rows[i]["score"] for i in (1, 2, 3))
    print(f"share of the prior-to-oracle gap closed on the test studies: {(prior - model) / (prior - oracle):.1%}")
    cv = json.loads((grading / "metrics.json").read_text())["oof"]
    print(f"cross-validation (fold {fold}, inputs at the landmark stage's predictions): score {cv['score']:.4f}"
          + (f", after calibration {cv['calibrated/score']:.4f}" if "calibrated/score" in cv else ""))
    (out / "scores.json").write_text(json.dumps({"test": rows, "cv": cv}, indent=2))
    report = out / "report"
    run("8. spine-report: one HTML page on the grading run (metrics against the prior and the oracle, plots, "
        "landmark errors, the worst studies with their images, calibration)",
        [str(BIN / "spine-report"), f"run={grading}", f"out={report}"])
    print(f"\n[demo] outputs in {out}: data/ (RSNA layout), preview.png, cache/ (volumes, series.csv, "
          "coordinates.csv, folds.csv), runs/landmarks/ (config, weights, metrics, OOF points, PNG), "
          "runs/grading/ (weights, calibration, OOF, confusion/reliability PNGs), submission.csv (+ .log.csv), "
          "prior_submission.csv, scores.json, report/report.html")
    print(f"[demo] the run report: {report / 'report.html'} (open it in a browser)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
