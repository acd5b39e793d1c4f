"""``spine-doctor cache_dir=DIR [run=RUN] [stage=landmarks|grading] [out=DIR] [key=value ...]``.

The checks that show in minutes what cost others weeks, on a preprocessing cache (and the DICOM and train.csv
it was made from), one ``PASS`` / ``WARN`` / ``FAIL`` line each:

{checks}

``run=<run folder>`` makes learn and throughput train that run's config, else the default config of ``stage``
with the ``train=[...]`` spine-train overrides. Writes ``<out>/doctor.json`` and the PNGs. Exit codes: 0 no
failure (warnings allowed), 1 a check failed (or the cache cannot be opened), 2 bad config.
"""

from __future__ import annotations

import sys

from spine.cli import compose_or_code
from spine.doctor.config import DoctorConfig
from spine.doctor.registry import help_text
from spine.errors import command


def describe() -> str:
    """The module's text with ``{checks}`` replaced by the registered checks and their help (``--help``)."""
    return (__doc__ or "").replace("{checks}", help_text())


@command("doctor")
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = compose_or_code("doctor", args, DoctorConfig, describe(), prog="spine-doctor")
    if isinstance(cfg, int):
        return cfg
    from spine.cache import Cache
    from spine.doctor.run import REPORT_JSON, run_doctor

    cache = Cache.open(cfg.cache_dir)  # no usable cache: CacheError, one line (spine.errors.command)
    results = run_doctor(cfg, cache, echo=lambda line: print(line, flush=True))
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "warn", "fail")}
    print(f"[doctor] {counts['pass']} passed, {counts['warn']} warned, {counts['fail']} failed; report "
          f"{cfg.out}/{REPORT_JSON}", file=sys.stderr)
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
