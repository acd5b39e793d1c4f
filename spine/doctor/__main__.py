"""``spine-doctor cache_dir=DIR [run=RUN] [stage=landmarks|grading] [out=DIR] [key=value ...]``.

The checks that show in minutes what cost others weeks, on a preprocessing cache (and the DICOM and train.csv
it was made from), one ``PASS`` / ``WARN`` / ``FAIL`` line each:

  label_positions  every label point's world position re-derived from its DICOM pixel agrees with the cache, its
                   cached voxel lies on its instance; PNGs of N random studies per series type, the points on
                   the DICOM slice beside the slice sampled from the cache through them (swapped x/y, labels on
                   the wrong image)
  level_order      levels in anatomical order along the spine, at a plausible disc spacing
  left_right       every left point at the patient's left (+x) of its right partner (lists the studies)
  input_fidelity   distinct intensity values, 8-bit or otherwise quantised input, clipping, NaN
  slice_order      InstanceNumber order against the IPP order (spine never uses InstanceNumber: a warning)
  labels           class balance per condition and level, missing grades or points, fold balance
  learn            the configured model memorises 8 studies: its training loss must go close to zero
  throughput       the loader's items/s against the model's step rate here, and the advice that follows

``run=<run folder>`` makes learn and throughput train that run's config, else the default config of ``stage``
with the ``train=[...]`` spine-train overrides. Writes ``<out>/doctor.json`` and the PNGs. Exit codes: 0 no
failure (warnings allowed), 1 a check failed (or the cache cannot be opened), 2 bad config.
"""

from __future__ import annotations

import sys

from spine.config import compose_or_code
from spine.errors import command
from spine.doctor.config import DoctorConfig


@command("doctor")
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = compose_or_code("doctor", args, DoctorConfig, __doc__, prog="spine-doctor")
    if isinstance(cfg, int):
        return cfg
    from spine.doctor.run import REPORT_JSON, run_doctor
    from spine.preprocess.cache import Cache

    try:
        cache = Cache.open(cfg.cache_dir)
    except FileNotFoundError as err:  # CacheError included
        print(f"[doctor] error: {err}", file=sys.stderr)
        return 1
    results = run_doctor(cfg, cache, echo=lambda line: print(line, flush=True))
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "warn", "fail")}
    print(f"[doctor] {counts['pass']} passed, {counts['warn']} warned, {counts['fail']} failed; report "
          f"{cfg.out}/{REPORT_JSON}", file=sys.stderr)
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
