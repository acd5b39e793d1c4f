"""The labels: class balance per condition and level, studies with missing grades or points, fold balance.

:func:`label_summary` works on plain tables (train.csv, coordinates.csv, folds.csv, series.csv);
:func:`check_labels` reads them from the cache (train.csv from the cache's data_dir, or ``labels``) and grades:
fail when there is nothing to train on (no train.csv, no label points, no folds) or when more than
``max_missing_fraction`` of the fold studies have no train.csv row; warn when more than that share of the
studies miss grades or label points, when label points lie on a series of another type than their condition's
(a label attached to the wrong image), or when the folds are unbalanced (grade x fold chi-square p-value below
``fold_balance_p``, or sizes further apart than ``max_fold_size_ratio``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine.constants import (
    CONDITION_NAMES,
    CONDITION_SERIES,
    CONDITIONS,
    LEVEL_NAMES,
    LEVELS,
    SEVERITIES,
    label_column,
    series_type,
)
from spine.doctor.registry import check
from spine.doctor.result import FAIL, PASS, WARN, CheckResult

_COND = dict(zip(CONDITION_NAMES, CONDITIONS))
_LEVEL = dict(zip(LEVEL_NAMES, LEVELS))
_MAX_LISTED = 20


def long_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """train.csv -> ``study_id, condition, level, grade`` (snake case; grade 0..2 into SEVERITIES, -1 missing)."""
    code = {s: i for i, s in enumerate(SEVERITIES)}
    parts = []
    for condition in CONDITIONS:
        for level in LEVELS:
            column = label_column(condition, level)
            values = labels[column] if column in labels.columns else pd.Series([None] * len(labels))
            parts.append(pd.DataFrame({"study_id": labels.study_id.astype(np.int64).to_numpy(), "condition": condition,
                                       "level": level, "grade": [code.get(v, -1) for v in values]}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["study_id", "condition", "level",
                                                                                    "grade"])


def fold_balance_p(table: pd.DataFrame) -> float:
    """Chi-square p-value of a fold x grade count table (1.0 when there is nothing to compare)."""
    from scipy.stats import chi2_contingency

    counts = table.to_numpy(dtype=float)
    counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0] if counts.size else counts
    if counts.ndim != 2 or min(counts.shape) < 2:
        return 1.0
    return float(chi2_contingency(counts).pvalue)


def label_summary(labels: pd.DataFrame, coords: pd.DataFrame, folds: pd.DataFrame,
                  series: pd.DataFrame | None = None) -> dict:
    """What the labels hold.

    Returns a dict: ``balance`` (DataFrame, index (condition, level), columns SEVERITIES + ``missing``: counts
    over the studies of train.csv), ``missing_grades`` (studies with an empty grade), ``missing_points``
    (studies with a graded condition and level that has no label point), ``points_without_grade``,
    ``wrong_series`` (label point rows on a series whose type is not their condition's; needs ``series``),
    ``fold_studies_without_labels``, ``labelled_studies_without_fold``, ``fold_sizes`` ({fold: studies}),
    ``fold_grades`` (DataFrame fold x SEVERITIES), ``fold_p`` (its chi-square p-value).
    """
    long = long_labels(labels)
    balance = (long.assign(grade=long.grade.map(dict(enumerate(SEVERITIES))).fillna("missing"))
               .groupby(["condition", "level", "grade"]).size().unstack(fill_value=0))
    balance = balance.reindex(columns=[*SEVERITIES, "missing"], fill_value=0)
    balance = balance.reindex(pd.MultiIndex.from_product([CONDITIONS, LEVELS], names=["condition", "level"]),
                              fill_value=0)
    missing_grades = sorted(set(int(s) for s in long[long.grade < 0].study_id))

    points = coords.assign(condition=[_COND.get(c, c) for c in coords.condition],
                           level=[_LEVEL.get(v, v) for v in coords.level]) if len(coords) else \
        pd.DataFrame(columns=["study_id", "series_id", "condition", "level"])
    have_point = set(zip(points.study_id.astype(np.int64), points.condition, points.level))
    graded = long[long.grade >= 0]
    labelled_studies = set(int(s) for s in labels.study_id)
    without = graded[[(int(s), c, lv) not in have_point for s, c, lv in zip(graded.study_id, graded.condition,
                                                                           graded.level)]]
    missing_points = sorted(set(int(s) for s in without.study_id))
    grade_of = {(int(s), c, lv): g for s, c, lv, g in zip(long.study_id, long.condition, long.level, long.grade)}
    points_without_grade = sorted({(int(s), c, lv) for s, c, lv in have_point
                                   if int(s) in labelled_studies and grade_of.get((int(s), c, lv), -1) < 0})

    wrong_series = pd.DataFrame(columns=["study_id", "series_id", "condition", "description"])
    if series is not None and len(points):
        kind = {(int(a), int(b)): d for a, b, d in zip(series.study_id, series.series_id, series.description)}
        rows = []
        for r in points.itertuples():
            expected = CONDITION_SERIES.get(r.condition)
            found = kind.get((int(r.study_id), int(r.series_id)))
            if expected and found and series_type(found) != expected:
                rows.append({"study_id": int(r.study_id), "series_id": int(r.series_id), "condition": r.condition,
                             "description": found})
        wrong_series = pd.DataFrame(rows, columns=wrong_series.columns)

    fold_of = {int(s): int(f) for s, f in zip(folds.study_id, folds.fold)} if len(folds) else {}
    sizes = {int(k): int(v) for k, v in pd.Series(list(fold_of.values()), dtype="int64").value_counts().sort_index().items()}
    with_fold = long[long.study_id.isin(list(fold_of)) & (long.grade >= 0)]
    fold_grades = (with_fold.assign(fold=with_fold.study_id.map(fold_of), grade=with_fold.grade.map(dict(enumerate(SEVERITIES))))
                   .groupby(["fold", "grade"]).size().unstack(fill_value=0).reindex(columns=list(SEVERITIES), fill_value=0)
                   if len(with_fold) else pd.DataFrame(columns=list(SEVERITIES)))
    return {"balance": balance, "missing_grades": missing_grades, "missing_points": missing_points,
            "points_without_grade": points_without_grade, "wrong_series": wrong_series,
            "fold_studies_without_labels": sorted(set(fold_of) - labelled_studies),
            "labelled_studies_without_fold": sorted(labelled_studies - set(fold_of)),
            "fold_sizes": sizes, "fold_grades": fold_grades, "fold_p": fold_balance_p(fold_grades),
            "studies": len(labelled_studies)}


@check("labels", order=60, help="class balance per condition and level, missing grades or points, fold balance")
def check_labels(ctx) -> CheckResult:
    cfg, cache = ctx.cfg, ctx.cache
    path = ctx.labels_path
    if path is None or not path.is_file():
        return CheckResult("labels", FAIL, f"no train.csv ({path or 'set labels=<train.csv> or data_dir=<folder>'})")
    from spine.io.tables import TableError, read_train_labels

    try:
        labels = read_train_labels(path)
    except TableError as err:
        return CheckResult("labels", FAIL, f"train.csv not usable: {err}")
    s = label_summary(labels, cache.coordinates, cache.folds, cache.series)
    n, folds = max(s["studies"], 1), len(cache.folds)
    problems, warnings = [], []
    if not len(cache.coordinates):
        problems.append("no label points in coordinates.csv")
    if not folds:
        problems.append("no folds.csv (or an empty one)")
    orphan = s["fold_studies_without_labels"]
    if orphan and len(orphan) / max(folds, 1) > cfg.max_missing_fraction:
        problems.append(f"{len(orphan)} fold studies have no train.csv row")
    elif orphan:
        warnings.append(f"{len(orphan)} fold studies have no train.csv row")
    for key, what in (("missing_grades", "miss a grade"), ("missing_points", "miss a label point of a graded level")):
        if s[key] and len(s[key]) / n > cfg.max_missing_fraction:
            warnings.append(f"{len(s[key])} of {n} studies {what}")
    if len(s["wrong_series"]):
        warnings.append(f"{len(s['wrong_series'])} label points lie on a series of another type than their "
                        f"condition's (studies {', '.join(map(str, sorted(set(s['wrong_series'].study_id))[:5]))})")
    sizes = s["fold_sizes"]
    if sizes and max(sizes.values()) / max(min(sizes.values()), 1) > cfg.max_fold_size_ratio:
        warnings.append(f"fold sizes {sizes} differ by more than x{cfg.max_fold_size_ratio:g}")
    if s["fold_p"] < cfg.fold_balance_p:
        warnings.append(f"grades are unbalanced across folds (chi-square p = {s['fold_p']:.2g} < {cfg.fold_balance_p:g})")
    status = FAIL if problems else WARN if warnings else PASS
    totals = s["balance"][list(SEVERITIES)].sum()
    share = totals / max(totals.sum(), 1)
    summary = (f"{s['studies']} studies, grades {', '.join(f'{k} {100 * v:.0f}%' for k, v in share.items())}; "
               f"{len(s['missing_grades'])} with a missing grade, {len(s['missing_points'])} with a missing point; "
               f"{len(sizes)} folds of {', '.join(str(v) for v in sizes.values())} studies (grade balance p = "
               f"{s['fold_p']:.2g})")
    details = problems + warnings
    details += [f"study {st}: missing grade(s)" for st in s["missing_grades"][:_MAX_LISTED]]
    details += [f"study {st}: graded level without a label point" for st in s["missing_points"][:_MAX_LISTED]]
    details += [f"study {r.study_id} series {r.series_id}: {r.condition} point on a {r.description} series"
                for r in s["wrong_series"].head(_MAX_LISTED).itertuples()]
    figures, notes = [], []
    try:
        figures.append(str(_plot_balance(s["balance"], ctx.out / "labels_balance.png")))
    except Exception as err:  # noqa: BLE001
        notes.append(f"figure failed: {type(err).__name__}: {err}")
    balance = s["balance"].reset_index()
    numbers = {k: v for k, v in s.items() if k not in ("balance", "fold_grades")}
    numbers.update({"balance": balance, "fold_grades": s["fold_grades"].reset_index(), "notes": notes})
    return CheckResult("labels", status, summary, details + notes, numbers, figures)


def _plot_balance(balance: pd.DataFrame, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CONDITIONS), figsize=(3 * len(CONDITIONS), 3), sharey=True)
    colours = {"Normal/Mild": "tab:green", "Moderate": "tab:orange", "Severe": "tab:red", "missing": "tab:gray"}
    for ax, condition in zip(np.atleast_1d(axes), CONDITIONS):
        part = balance.loc[condition]
        bottom = np.zeros(len(part))
        for grade, colour in colours.items():
            ax.bar(range(len(part)), part[grade].to_numpy(), bottom=bottom, color=colour, label=grade)
            bottom += part[grade].to_numpy()
        ax.set_xticks(range(len(part)), [LEVEL_NAMES[LEVELS.index(lv)] for lv in part.index], fontsize=7)
        ax.set_title(condition.replace("_", " "), fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("studies")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
