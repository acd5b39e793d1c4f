"""Run the checks of a `DoctorConfig` on a cache: one `CheckResult` each, doctor.json, the exit code."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from spine.doctor.registry import check_function
from spine.doctor.result import FAIL, CheckResult, Context, worst, write_json

log = logging.getLogger(__name__)

REPORT_JSON = "doctor.json"


def run_check(name: str, ctx: Context) -> CheckResult:
    """One registered check (:mod:`spine.doctor.registry`); a check that raises is a failure that says why (the
    other checks still run)."""
    started = time.perf_counter()
    try:
        result = check_function(name)(ctx)
    except Exception as err:  # noqa: BLE001 - the doctor reports, it never stops at the first problem
        log.debug("check %s raised", name, exc_info=True)
        result = CheckResult(name, FAIL, f"could not run: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                             traceback.format_exception_only(type(err), err)[-1:])
    result.seconds = time.perf_counter() - started
    return result


def run_doctor(cfg, cache, echo=print) -> list[CheckResult]:
    """Every check of ``cfg.checks`` on ``cache``, each line echoed as soon as it is known; writes
    ``<out>/doctor.json`` (config, results, overall status) and the checks' PNGs."""
    out = Path(cfg.out)
    ctx = Context(cfg, cache, out)
    results = []
    started = time.perf_counter()
    for name in cfg.checks:
        log.info("%s ...", name)
        result = run_check(name, ctx)
        results.append(result)
        echo(result.line)
        if result.status != "pass":
            for line in result.details[:8]:
                echo(f"    {line}")
            if len(result.details) > 8:
                echo(f"    ... {len(result.details) - 8} more in {out / REPORT_JSON}")
    from dataclasses import asdict

    write_json({"cache": str(cache.root), "status": worst(r.status for r in results),
                "seconds": time.perf_counter() - started, "config": asdict(cfg),
                "checks": [r.to_dict() for r in results]}, out / REPORT_JSON)
    return results
