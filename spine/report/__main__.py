"""``spine-report run=RUN [out=DIR] [landmarks=RUN] [data_dir=DIR] [worst=6] [key=value ...]``.

One self-contained HTML page (``<out>/report.html``, figures embedded as data: URIs) on a spine-train run folder:

  config        the run's config.yaml (and its landmark run's), collapsible
  metrics       the competition metric per fold and part, out of fold: model, class prior, and on synthetic data
                the Bayes-optimal oracle and the share of the prior-to-oracle gap closed; the test submission
                against the synthetic test labels
  plots         confusion and reliability per condition
  landmarks     the landmark run's point errors per fold, level and condition group (table and box plots)
  worst         the worst out-of-fold studies: predicted against true grades, the model's views or crops,
                predicted against true points over sagittal slices
  calibration   the metric before and after calibration (in sample and cross-fitted), reliability after

A landmark run alone gets its landmark sections and its worst studies by point error. A missing piece (no
oracle, no landmark run, no cache, a series missing) is said in its section. Prints the page's path. Exit codes:
0 written, 1 not a run folder, 2 bad config.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from spine.cli import compose_or_code
from spine.errors import command
from spine.report.config import ReportConfig

REPORT_HTML = "report.html"
log = logging.getLogger("spine.report")


@command("report")
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = compose_or_code("report", args, ReportConfig, __doc__, prog="spine-report")
    if isinstance(cfg, int):
        return cfg
    from spine.report.gather import gather  # after the config: --help and typos answer without torch
    from spine.report.render import render

    report = gather(cfg)  # a ReportError: one line, exit code 1 (spine.errors.command)
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "report"
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_HTML
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(report), encoding="utf-8")
    tmp.replace(path)
    for section, why in report.missing.items():
        log.info("%s: %s", section, why)
    print(path.resolve())  # the command's answer, on stdout
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
