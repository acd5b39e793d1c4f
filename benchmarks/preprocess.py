"""Preprocessing throughput against the floor (bare pydicom decode) and a naive SimpleITK series reader.

    .venv/bin/python benchmarks/preprocess.py [--studies 6] [--data DIR] [--keep] [--workers 1 2]

Generates ``--studies`` studies of the ``realistic`` synthetic preset into a temporary folder (or uses
``--data``, an RSNA-layout folder), then times on the same files:
- decode: ``pydicom.dcmread(f).pixel_array`` for every file, one process (the floor: no geometry, no volume);
- naive sitk: ``sitk.ImageSeriesReader`` on each series folder (one regular grid per series, which is wrong
  for multi-stack series; shown for scale);
- read_series: our reader alone (decode + geometry + float32 stacks);
- preprocess: ``spine.preprocess.run`` into a fresh cache with 1 and 2 worker processes;
and prints studies per second, the ratios to the floor, where the preprocessing time goes, and the cache size
per study. Files are read once before timing, so every variant reads from the page cache.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd


def _generate(out: Path, studies: int) -> None:
    from spine.config import compose
    from spine.synth.config import SynthConfig
    from spine.synth.generate import generate

    cfg = compose("synth", ["preset=realistic", f"out_dir={out}", f"n_train={studies}", "n_test=0", "workers=2"],
                  SynthConfig)
    started = time.perf_counter()
    generate(cfg)
    print(f"generated {studies} realistic studies in {time.perf_counter() - started:.0f} s -> {out}")


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _size_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--data", type=Path, help="existing RSNA-layout folder (default: generate one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and caches")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="repeats of the decode / reader timings (best kept)")
    args = parser.parse_args()

    import pydicom
    import SimpleITK as sitk

    from spine.config import compose
    from spine.io.dicom import read_series
    from spine.preprocess.config import PreprocessConfig
    from spine.preprocess.run import run

    work = Path(tempfile.mkdtemp(prefix="spine_bench_preprocess_"))
    data = args.data
    if data is None:
        data = work / "data"
        _generate(data, args.studies)
    listing = pd.read_csv(data / "train_series_descriptions.csv")
    folders = [data / "train_images" / str(r.study_id) / str(r.series_id) for r in listing.itertuples()]
    files = sorted(p for folder in folders for p in folder.iterdir())
    n_studies = listing.study_id.nunique()
    source_mb = _size_mb(files)
    for path in files:  # page cache: every variant below reads warm files
        path.read_bytes()
    print(f"{n_studies} studies, {len(folders)} series, {len(files)} files, {source_mb / n_studies:.1f} MB "
          f"DICOM per study")

    def decode() -> None:
        for path in files:
            pydicom.dcmread(path).pixel_array  # noqa: B018 - the decode is the point

    def naive_sitk() -> None:
        for folder in folders:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
            reader.Execute()

    def reader_only() -> None:
        for folder in folders:
            read_series(folder)

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # multi-stack series: "non uniform sampling" warnings
    times = {"decode (pydicom, floor)": _best(decode, args.repeat),
             "naive sitk.ImageSeriesReader": _best(naive_sitk, args.repeat),
             "read_series (our reader)": _best(reader_only, args.repeat)}
    details = {}
    for workers in args.workers:
        cache_dir = work / f"cache_w{workers}"
        cfg = compose("preprocess", [f"data_dir={data}", f"cache_dir={cache_dir}", f"workers={workers}",
                                     "progress=false"], PreprocessConfig)
        started = time.perf_counter()
        summary = run(cfg)
        times[f"preprocess, {workers} worker(s)"] = time.perf_counter() - started
        details[workers] = (summary, cache_dir)
        assert summary.n_errors == 0, summary.failures

    floor = times["decode (pydicom, floor)"]
    print(f"\n{'variant':34s} {'seconds':>8s} {'studies/s':>10s} {'x decode':>9s}")
    for name, seconds in times.items():
        print(f"{name:34s} {seconds:8.2f} {n_studies / seconds:10.2f} {seconds / floor:9.2f}")
    naive = times["naive sitk.ImageSeriesReader"]
    for workers, (summary, cache_dir) in details.items():
        seconds = times[f"preprocess, {workers} worker(s)"]
        print(f"\npreprocess with {workers} worker(s): {seconds / floor:.2f}x the bare decode (target 1.5x), "
              f"{seconds / naive:.2f}x the naive sitk reader; time in workers: read {summary.read_s:.2f} s, "
              f"resample {summary.resample_s:.2f} s, write {summary.write_s:.2f} s; peak worker memory "
              f"{summary.peak_rss_mb:.0f} MB")
    summary, cache_dir = details[args.workers[0]]
    volumes = list(Path(summary.cache_root, "volumes").rglob("*.nii"))
    masks = list(Path(summary.cache_root, "volumes").rglob("*_mask.nii.gz"))
    print(f"\ncache per study: {_size_mb(volumes) / n_studies:.1f} MB volumes (float32 .nii) + "
          f"{_size_mb(masks) / n_studies:.2f} MB masks (.nii.gz); DICOM source {source_mb / n_studies:.1f} MB")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
