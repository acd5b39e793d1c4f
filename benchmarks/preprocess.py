"""Preprocessing throughput against the floor (bare pydicom decode), cache size against the DICOM pixel data, and
the sampler's speed on the cached stacks.

    .venv/bin/python benchmarks/preprocess.py [--studies 4] [--data DIR] [--keep] [--repeat 2] [--items 24]

Generates ``--studies`` studies of the ``realistic`` synthetic preset into a temporary folder (or uses ``--data``,
an RSNA-layout folder), then, on the same files:
- decode: ``pydicom.dcmread(f).pixel_array`` for every file, one process (the floor: no geometry, no writing);
- dcm2niix: ``dcm2niix -z n`` converting the same image folder to NIfTI (the PyPI ``dcm2niix`` package, a dev
  dependency), the tool a user would otherwise take (it is single-threaded);
- read_series: our reader alone (decode + geometry + stacks);
- preprocess: ``spine.preprocess.run`` into a fresh cache with 1 worker (targets: at most 1.5x the decode, and
  faster than dcm2niix) and with 2 workers;
- cache bytes: every file under the cache's ``volumes/`` (stack files and records) against the DICOM pixel bytes
  (Rows * Columns * BitsAllocated / 8 summed over the files; target: at most 1.1x);
- sampler, one core (``SeriesVolume.sample`` on the memory-mapped cache): a 3-channel 64^3 crop from the three
  series of a study (`spine.data.crops.crop_grid`, one ``sample`` per series) and a 5-slice 64x64 sagittal view
  of one series, centred on the study's label points; ms per item and items per second.
Files are read once before timing, so every variant reads from the page cache.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # the sampler on one core
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SERIES_TYPES = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")
SAGITTAL_VIEW = np.column_stack([(1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)])  # slices L-R, rows feet


def _generate(out: Path, studies: int) -> None:
    from spine.cli import compose
    from spine.synth.config import SynthConfig
    from spine.synth.generate import generate

    cfg = compose("synth", ["preset=realistic", f"out_dir={out}", f"n_train={studies}", "n_test=0", "workers=2"],
                  SynthConfig)
    started = time.perf_counter()
    generate(cfg)
    print(f"generated {studies} realistic studies in {time.perf_counter() - started:.0f} s -> {out}")


def _best(fn, repeat: int, setup=None) -> float:
    """The fastest of ``repeat`` timed calls of ``fn``, each after an untimed ``setup()``."""
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _per_item(fn, items: list) -> float:
    """Seconds per item of ``fn(item)``, after one warm-up item."""
    fn(items[0])
    started = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - started) / len(items)


def _sampler(cache_root: Path, n_items: int) -> dict[str, float]:
    """Seconds per 3-channel 64^3 crop and per 5 x 64 x 64 view, on the first study with all three series."""
    from spine.cache import Cache
    from spine.data.crops import crop_grid
    from spine.data.grid import SamplingGrid

    cache = Cache(cache_root)
    coords = cache.coordinates
    for study in sorted(set(cache.series.study_id)):
        ids = [cache.series_of(study, t) for t in SERIES_TYPES]
        points = coords[coords.study_id == study][["world_x", "world_y", "world_z"]].dropna().to_numpy()
        if all(ids) and len(points):
            break
    else:
        raise SystemExit("no study with all three series and label points in the cache")
    volumes = [cache.load_volume(study, series[0]) for series in ids]
    for volume in volumes:
        volume.intensity_range()  # once per series, as a dataset does
    rng = np.random.default_rng(0)
    centres = [points[i % len(points)] + rng.uniform(-4, 4, 3) for i in range(n_items)]

    def crop(centre) -> np.ndarray:
        grid = crop_grid(centre, size=(64, 64, 64))
        return np.stack([volume.sample(grid)[0] for volume in volumes])

    def view(centre) -> np.ndarray:
        grid = SamplingGrid.centred(centre, (5, 64, 64), (3.0, 0.8, 0.8), SAGITTAL_VIEW)
        return volumes[1].sample(grid)[0]

    assert crop(centres[0]).shape == (3, 64, 64, 64) and view(centres[0]).shape == (5, 64, 64)
    return {"3-channel 64^3 crop (3 series)": _per_item(crop, centres),
            "5 x 64 x 64 sagittal view (1 series)": _per_item(view, centres)}


def _dcm2niix() -> str | None:
    """The dcm2niix executable: beside this Python (the venv's, from the PyPI package), else on PATH."""
    beside = Path(sys.executable).parent / "dcm2niix"
    return str(beside) if beside.is_file() else shutil.which("dcm2niix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--data", type=Path, help="existing RSNA-layout folder (default: generate one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and caches")
    parser.add_argument("--repeat", type=int, default=2, help="repeats of the decode / reader timings (best kept)")
    parser.add_argument("--items", type=int, default=24, help="crops and views timed")
    args = parser.parse_args()

    import pydicom

    from spine.cli import compose
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
    files = sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir())
    n_studies = listing.study_id.nunique()
    for path in files:  # page cache: every variant below reads warm files
        path.read_bytes()
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    pixel_bytes = sum(int(h.Rows) * int(h.Columns) * int(h.BitsAllocated) // 8 for h in headers)
    file_bytes = sum(p.stat().st_size for p in files)
    print(f"{n_studies} studies, {len(folders)} series, {len(files)} files: {file_bytes / 1e6 / n_studies:.1f} MB "
          f"DICOM per study, of which {pixel_bytes / 1e6 / n_studies:.1f} MB pixel data")

    def decode() -> None:
        for path in files:
            pydicom.dcmread(path).pixel_array  # noqa: B018 - the decode is the point

    def reader_only() -> None:
        for folder in folders:
            read_series(folder)

    times = {"decode (pydicom, floor)": _best(decode, args.repeat)}
    converter = _dcm2niix()
    if converter is not None:
        out = work / "dcm2niix"

        def fresh() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        def convert() -> None:
            subprocess.run([converter, "-z", "n", "-o", str(out), str(data / "train_images")], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        times["dcm2niix -z n (same folder)"] = _best(convert, args.repeat, fresh)
    else:
        print("dcm2niix not found (pip install dcm2niix): its row is left out")
    times["read_series (our reader)"] = _best(reader_only, args.repeat)
    details = {}
    for workers in (1, 2):
        cache_dir = work / f"cache_w{workers}"
        cfg = compose("preprocess", [f"data_dir={data}", f"cache_dir={cache_dir}", f"workers={workers}",
                                     "progress=false"], PreprocessConfig)

        def preprocess() -> None:
            details[workers] = run(cfg)

        times[f"preprocess, {workers} worker(s)"] = _best(preprocess, args.repeat,
                                                          lambda: shutil.rmtree(cache_dir, ignore_errors=True))
        summary = details[workers]
        assert summary.n_errors == 0, summary.failures

    floor = times["decode (pydicom, floor)"]
    print("\n| variant | seconds | studies/s | x decode |\n|---|---:|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {n_studies / seconds:.2f} | {seconds / floor:.2f} |")
    one = times["preprocess, 1 worker(s)"]
    summary = details[1]
    if converter is not None:
        print(f"\npreprocess, 1 worker: {one / times['dcm2niix -z n (same folder)']:.2f}x dcm2niix (target < 1.0x)")
    print(f"preprocess, 1 worker: {one / floor:.2f}x the bare decode (target <= 1.5x); time in the worker: read "
          f"{summary.read_s:.2f} s, select {summary.select_s:.2f} s, write {summary.write_s:.2f} s; peak worker "
          f"memory {summary.peak_rss_mb:.0f} MB; 2 workers: {times['preprocess, 2 worker(s)'] / floor:.2f}x")

    volumes = [p for p in Path(summary.cache_root, "volumes").rglob("*") if p.is_file()]
    cache_bytes = sum(p.stat().st_size for p in volumes)
    stack_bytes = sum(p.stat().st_size for p in volumes if p.suffix == ".nii")
    print("\n| bytes per study | MB | x DICOM pixel data |\n|---|---:|---:|")
    for name, size in (("DICOM files", file_bytes), ("DICOM pixel data", pixel_bytes),
                       ("cache volumes/ (stacks + records)", cache_bytes), ("of which stack files (.nii)", stack_bytes)):
        print(f"| {name} | {size / 1e6 / n_studies:.1f} | {size / pixel_bytes:.3f} |")
    print(f"\ncache: {cache_bytes / pixel_bytes:.3f}x the DICOM pixel bytes (target <= 1.1x)")

    per_item = _sampler(Path(summary.cache_root), args.items)
    print(f"\n| sampler, one core ({args.items} items) | ms per item | items/s |\n|---|---:|---:|")
    for name, seconds in per_item.items():
        print(f"| {name} | {1000 * seconds:.1f} | {1 / seconds:.1f} |")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
