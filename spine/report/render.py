"""The report as one self-contained HTML page: tables as HTML, figures as base64 ``data:`` PNGs, no script.

Sections (``<section id=...>``, in this order; each says what is missing when it cannot be filled):
``summary`` (the run, its data, cache and landmark run), ``config`` (collapsible YAML), ``metrics`` (per fold and
part: model, prior, oracle, gap closed), ``plots`` (confusion, reliability), ``landmarks`` (metrics per fold,
errors per level and condition group, box plots), ``worst`` (the worst out-of-fold studies), ``calibration``
(before and after). A landmark run alone gets ``summary``, ``config``, ``landmarks`` and ``worst``.
"""

from __future__ import annotations

import base64
import html
import math
from string import Template

import numpy as np
import pandas as pd

from spine.constants import CONDITIONS, LEVEL_NAMES, LEVELS, PROB_COLUMNS
from spine.report.contents import LANDMARK_KEYS, Report, StudyPage
from spine.report.figures import GRADE_SHORT, SHORT

__all__ = ["GRADING_SECTIONS", "LANDMARK_SECTIONS", "render"]

GRADING_SECTIONS = ("summary", "config", "metrics", "plots", "landmarks", "worst", "calibration")
LANDMARK_SECTIONS = ("summary", "config", "landmarks", "worst")
_LEVEL_NAME = dict(zip(LEVELS, LEVEL_NAMES))

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1500px;
       padding: 0 1.5em 3em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 2px 7px; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
tr.model td { font-weight: 600; }
tr.gap td { color: #0a5; }
.missing { color: #a40; background: #fff5ec; border-left: 3px solid #e80; padding: 0.3em 0.7em; }
.note { color: #555; font-size: 0.9em; }
figure { margin: 0.5em 0 1em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.82em; }
details summary { cursor: pointer; color: #036; }
.study { border-top: 1px dashed #bbb; margin-top: 1.2em; }
.grades td.bad { background: #fbd3d0; }
.grades td.ok { background: #e3f4e3; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="note">spine-report, $created</p>
<nav>$nav</nav>
$sections
</body>
</html>
""")

_TITLES = {"summary": "Run", "config": "Config", "metrics": "Metrics per fold and part",
           "plots": "Confusion and reliability (out of fold, uncalibrated)", "landmarks": "Landmark errors",
           "worst": "Worst out-of-fold studies", "calibration": "Calibration: before and after"}


def render(report: Report) -> str:
    """The page of ``report``."""
    names = GRADING_SECTIONS if report.stage == "grading" else LANDMARK_SECTIONS
    bodies = {"summary": _summary, "config": _config, "metrics": _metrics, "plots": _plots,
              "landmarks": _landmarks, "worst": _worst, "calibration": _calibration}
    sections = []
    for name in names:
        body = bodies[name](report)
        sections.append(f'<section id="{name}">\n<h2>{_TITLES[name]}</h2>\n{body}\n</section>')
    nav = " ".join(f'<a href="#{n}">{_TITLES[n].split(":")[0]}</a>' for n in names)
    title = f"{report.stage} run {report.run.name}: report"
    return _PAGE.substitute(title=_e(title), created=_e(report.created), nav=nav, sections="\n".join(sections))


# ------------------------------------------------------------------------------------------------ helpers
def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>' if text else ""


def _img(png: bytes | None, caption: str = "", alt: str = "") -> str:
    if not png:
        return _missing(f"no figure: {caption}")
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt or caption)}">{cap}</figure>'


def _number(value, digits: int = 4, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if percent:
        return f"{100 * float(value):.1f}%"
    return f"{float(value):.{digits}f}"


def _table(frame: pd.DataFrame, text_columns=(), percent_rows=None, digits=None, row_class=None,
           headers=None) -> str:
    """An HTML table of ``frame``: ``text_columns`` left-aligned as they are, numbers formatted (``digits`` per
    column, default 4); ``percent_rows(row)`` true: the row's floats as percentages; ``row_class(row)``: a CSS
    class."""
    digits = digits or {}
    headers = headers or {}
    head = "".join(f'<th class="{"text" if c in text_columns else ""}">{_e(headers.get(c, c))}</th>'
                   for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        percent = bool(percent_rows and percent_rows(row))
        cells = []
        for c in frame.columns:
            v = row[c]
            if c in text_columns or isinstance(v, str):
                cells.append(f'<td class="text">{_e(v)}</td>')
            elif isinstance(v, (float, np.floating)):
                cells.append(f"<td>{_number(float(v), digits.get(c, 4), percent)}</td>")
            else:
                cells.append(f"<td>{'' if v is None else _e(v)}</td>")
        cls = f' class="{row_class(row)}"' if row_class else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ------------------------------------------------------------------------------------------------ sections
def _summary(report: Report) -> str:
    rows = [("run", report.run), ("stage", report.stage),
            ("landmark run", report.landmark_run or "none"),
            ("data", report.data_dir or "not found"), ("cache", report.cache_root or "not found")]
    table = "".join(f'<tr><th class="text">{_e(k)}</th><td class="text">{_e(v)}</td></tr>' for k, v in rows)
    return f"<table>{table}</table>" + "".join(_missing(report.missing[k]) for k in ("data", "cache")
                                               if k in report.missing)


def _config(report: Report) -> str:
    out = [f"<details><summary>config.yaml of {_e(report.run)}</summary><pre>{_e(report.config_text)}</pre>"
           "</details>"]
    if report.landmark_config_text:
        out.append(f"<details><summary>config.yaml of the landmark run {_e(report.landmark_run)}</summary>"
                   f"<pre>{_e(report.landmark_config_text)}</pre></details>")
    if report.metrics_json:
        out.append(f"<details><summary>metrics.json as training wrote it</summary><pre>{_e(report.metrics_json)}"
                   "</pre></details>")
    return "\n".join(out)


def _metrics(report: Report) -> str:
    out = ['<p class="note">The competition metric (lower is better) of the out-of-fold predictions, per fold '
           "and over all folds: the model (uncalibrated), the class prior (fitted on the labels outside the fold) "
           "and, on synthetic data, the Bayes-optimal oracle, on the same rows; <em>gap closed</em> = (prior - "
           "model) / (prior - oracle). A test row scores the run's test submission against the synthetic test "
           "labels.</p>"]
    if report.metrics is not None:
        frame = report.metrics.copy()
        frame["fold"] = frame["fold"].astype(str)
        out.append(_table(frame, text_columns=("fold", "what"), percent_rows=lambda r: r["what"] == "gap closed",
                          row_class=lambda r: {"model": "model", "gap closed": "gap"}.get(r["what"], "")))
    out.append(_missing(report.missing.get("metrics", "")))
    return "\n".join(out)


def _plots(report: Report) -> str:
    if "plots" in report.missing:
        return _missing(report.missing["plots"])
    return (_img(report.figures.get("confusion"), "confusion per condition: true grade (rows) against the "
                 "argmax prediction (columns)", "confusion") +
            _img(report.figures.get("reliability"), "reliability per condition and grade (uncalibrated)",
                 "reliability"))


def _landmarks(report: Report) -> str:
    out = []
    if report.landmark_run is not None:
        out.append(f'<p class="note">Landmark run {_e(report.landmark_run)}: its out-of-fold points against the '
                   "label points of the cache (world mm).</p>")
    if report.landmark_metrics is not None:
        out.append("<h3>Per fold</h3>")
        frame = report.landmark_metrics.copy()
        frame["fold"] = frame["fold"].astype(str)
        out.append(_table(frame, text_columns=("fold",), digits={k: 3 for k in LANDMARK_KEYS}))
    if report.landmark_levels is not None:
        levels = report.landmark_levels.assign(level=report.landmark_levels.level.map(_LEVEL_NAME))
        out.append("<h3>Per level</h3>" + _table(levels, text_columns=("level",), digits=_mm_digits()))
        out.append("<h3>Per condition group</h3>" + _table(report.landmark_groups, text_columns=("group",),
                                                          digits=_mm_digits()))
        out.append(_img(report.figures.get("landmark_errors"), "point errors (mm) per level and condition group",
                        "landmark errors"))
    out.append(_missing(report.missing.get("landmarks", "")))
    return "\n".join(out)


def _mm_digits() -> dict:
    return {"median_mm": 2, "p90_mm": 2, "mean_mm": 2, "max_mm": 2, "within_5mm": 3}


def _worst(report: Report) -> str:
    if "worst" in report.missing:
        return _missing(report.missing["worst"])
    if not report.worst:
        return '<p class="note">No study shown (worst=0 or no scored study).</p>'
    out = [f'<p class="note">Ranked by {_e(report.worst_by)}.</p>']
    for n, page in enumerate(report.worst, 1):
        out.append(_study(n, page, report.stage))
    return "\n".join(out)


def _study(n: int, page: StudyPage, stage: str) -> str:
    fold = "" if page.fold is None else f", fold {page.fold}"
    what = f"score {page.loss:.4f}" if stage == "grading" else f"mean point error {page.loss:.2f} mm"
    out = [f'<div class="study" id="study-{page.study_id}"><h3>{n}. study {page.study_id}{_e(fold)}: {what}</h3>']
    if page.parts:
        out.append('<p class="note">' + ", ".join(f"{k} {_number(v)}" for k, v in page.parts.items()) + "</p>")
    for note in page.notes:
        out.append(_missing(note))
    if page.grades is not None:
        out.append(_grades(page.grades))
    if page.point_errors is not None and len(page.point_errors):
        errors = page.point_errors.pivot(index="condition", columns="level", values="error_mm")
        errors = errors.reindex(index=[c for c in CONDITIONS if c in errors.index],
                                columns=[lv for lv in LEVELS if lv in errors.columns])
        frame = errors.reset_index()
        frame.columns = ["condition", *[_LEVEL_NAME[c] for c in errors.columns]]
        frame["condition"] = frame["condition"].map(SHORT)
        out.append("<p class=\"note\">point error (mm), predicted against true</p>" +
                   _table(frame, text_columns=("condition",), digits={c: 1 for c in frame.columns}))
    for caption, png in page.figures.items():
        out.append(_img(png, caption, f"study {page.study_id}: {caption}"))
    out.append("</div>")
    return "\n".join(out)


def _grades(grades: pd.DataFrame) -> str:
    """Conditions x levels: true grade, predicted probabilities (N/M / Mod / Sev) and -log p[true]."""
    head = "".join(f"<th>{_e(name)}</th>" for name in LEVEL_NAMES)
    rows = []
    by = grades.set_index(["condition", "level"])
    for condition in CONDITIONS:
        cells = [f'<td class="text">{_e(SHORT[condition])}</td>']
        for level in LEVELS:
            g = by.loc[(condition, level)]
            probs = "/".join(_number(g[c], 2) for c in PROB_COLUMNS)
            true = GRADE_SHORT[["Normal/Mild", "Moderate", "Severe"].index(g["true"])] if g["true"] else "-"
            loss = g["loss"]
            cls = "" if not isinstance(loss, float) or math.isnan(loss) else ("bad" if loss > 1.0 else "ok")
            lost = f" ({loss:.2f})" if cls else ""
            cells.append(f'<td class="{cls}">true {_e(true)}: {probs}{lost}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return ('<p class="note">true grade: predicted N/M / Mod / Sev (the metric\'s -log p[true]; red above 1)</p>'
            f'<table class="grades"><thead><tr><th class="text">condition</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _calibration(report: Report) -> str:
    out = []
    if report.calibration is not None:
        out.append(_table(report.calibration, text_columns=("what",)))
    if report.calibration_params:
        p = report.calibration_params
        temps = ", ".join(f"{SHORT.get(c, c)} {t:.3f}" for c, t in p.get("temperature", {}).items())
        out.append(f'<p class="note">calibration.json: temperatures {_e(temps)}; any-severe scale '
                   f'{p.get("any_severe_scale", 1.0):.3f}; fitted on {p.get("fitted_on", 0)} rows of '
                   f'{p.get("fitted_on_studies", 0)} studies.</p>')
    out.append(_missing(report.missing.get("calibration", "")))
    if "reliability_calibrated" in report.figures:
        out.append(_img(report.figures["reliability_calibrated"], "reliability after the run's calibration "
                        "(in sample)", "reliability after calibration"))
    return "\n".join(out)

