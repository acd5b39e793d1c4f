"""Input fidelity (the voxels the models see) and slice order (InstanceNumber against ImagePositionPatient).

- ``input_fidelity``: for ``fidelity_series`` random cached series, the number of distinct intensity values
  (an 8-bit conversion leaves at most 256; real MRI has thousands), an integer step above 1 (values rescaled
  from fewer bits), the share of non-zero voxels at the maximum (clipping), and NaN or infinite voxels.
- ``slice_order``: per cached stack, whether InstanceNumber runs with the IPP order along the slice normal,
  against it, or neither. The project orders slices by IPP only, so a disagreement is a warning for anyone who
  sorts by InstanceNumber, never an error here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine.doctor.registry import check
from spine.doctor.result import FAIL, PASS, WARN, CheckResult

_MAX_VALUES = 2_000_000  # voxels of a series read for the distinct values (strided subsample)
_MAX_LISTED = 20


# ------------------------------------------------------------------------------------------ pure parts
def volume_fidelity(arrays, min_distinct_values: int = 257, max_clipped_fraction: float = 0.005) -> dict:
    """What the voxels of one series (its stacks' pixel arrays) say about how it was stored.

    Returns ``voxels``, ``nonfinite`` (NaN or infinite voxels), ``distinct`` (distinct finite values of a
    strided subsample of at most ~2M voxels), ``integer`` (all values integral), ``step`` (greatest common
    divisor of the steps between distinct integer values; None for other values), ``min``, ``max``,
    ``clipped_fraction`` (share of non-zero voxels at the maximum), and ``problems``: a list of
    ``nonfinite`` / ``quantised`` / ``clipped`` with ``why`` (one line).
    """
    arrays = [np.asarray(a) for a in arrays]
    total = int(sum(a.size for a in arrays))
    nonfinite = 0
    for a in arrays:
        if not np.issubdtype(a.dtype, np.integer):
            nonfinite += int(a.size - np.count_nonzero(np.isfinite(a)))
    stride = max(1, total // _MAX_VALUES)
    values = np.concatenate([a.reshape(-1)[::stride] for a in arrays]) if arrays else np.zeros(0)
    values = values[np.isfinite(values)] if not np.issubdtype(values.dtype, np.integer) else values
    out = {"voxels": total, "nonfinite": nonfinite, "distinct": 0, "integer": True, "step": None, "min": None,
           "max": None, "clipped_fraction": 0.0, "problems": [], "why": ""}
    why = []
    if nonfinite:
        out["problems"].append("nonfinite")
        why.append(f"{nonfinite} NaN or infinite voxels")
    if values.size:
        distinct = np.unique(values)
        out["distinct"] = int(distinct.size)
        out["min"], out["max"] = float(distinct[0]), float(distinct[-1])
        integer = bool(np.all(distinct == np.round(distinct)))
        out["integer"] = integer
        if integer and distinct.size > 1:
            steps = np.diff(distinct.astype(np.int64))
            out["step"] = int(np.gcd.reduce(steps)) if steps.size else None
        nonzero = int(np.count_nonzero(values))
        at_max = int(np.count_nonzero(values == distinct[-1])) if distinct[-1] != 0 else 0
        out["clipped_fraction"] = at_max / nonzero if nonzero else 0.0
        quantised = []
        if distinct.size < min_distinct_values:
            quantised.append(f"{distinct.size} distinct values (< {min_distinct_values})")
        if integer and distinct.size > 1 and 0 <= distinct[0] and distinct[-1] <= 255:
            quantised.append("all values in 0..255 (8-bit)")
        if out["step"] is not None and out["step"] > 1:
            quantised.append(f"values in steps of {out['step']}")
        if quantised:
            out["problems"].append("quantised")
            why.append("quantised: " + ", ".join(quantised))
        if distinct.size > 1 and out["clipped_fraction"] > max_clipped_fraction:
            out["problems"].append("clipped")
            why.append(f"clipped: {100 * out['clipped_fraction']:.2f}% of the non-zero voxels at the maximum "
                       f"{out['max']:g}")
    else:
        out["problems"].append("quantised")
        why.append("no finite voxel")
    out["why"] = "; ".join(why)
    return out


def instance_order(numbers) -> str:
    """How InstanceNumber runs along a stack's slices (sorted by IPP along the normal): ``same`` (increasing),
    ``reversed`` (decreasing), ``shuffled`` (neither), ``missing`` (a slice has none) or ``single`` (one slice)."""
    numbers = list(numbers)
    if any(n is None or (isinstance(n, float) and np.isnan(n)) for n in numbers):
        return "missing"
    if len(numbers) < 2:
        return "single"
    steps = np.diff(np.asarray(numbers, dtype=np.int64))
    if (steps > 0).all():
        return "same"
    if (steps < 0).all():
        return "reversed"
    return "shuffled"


_ORDER_RANK = {"single": 0, "same": 1, "reversed": 2, "missing": 3, "shuffled": 4}


def series_order(stacks_numbers) -> str:
    """The order of a series: that of its worst stack (shuffled > missing > reversed > same > single)."""
    orders = [instance_order(n) for n in stacks_numbers] or ["single"]
    return max(orders, key=_ORDER_RANK.__getitem__)


# --------------------------------------------------------------------------------------- the checks
@check("input_fidelity", order=40, help=(
    "distinct intensity values, 8-bit or otherwise quantised input, clipping, NaN"))
def check_input_fidelity(ctx) -> CheckResult:
    cfg, cache = ctx.cfg, ctx.cache
    ok = cache.series[cache.series.status == "ok"]
    if ok.empty:
        return CheckResult("input_fidelity", FAIL, "no series with stacks in the cache")
    keys = list(zip(ok.study_id.astype(int), ok.series_id.astype(int), ok.description))
    rng = ctx.rng(3)
    chosen = sorted(rng.choice(len(keys), size=min(cfg.fidelity_series, len(keys)), replace=False).tolist())
    rows, notes = [], []
    for n in chosen:
        study, series, description = keys[n]
        try:
            volume = cache.load_volume(study, series)
            stats = volume_fidelity([s.pixels for s in volume.stacks], cfg.min_distinct_values,
                                    cfg.max_clipped_fraction)
            dtypes = sorted({str(np.asarray(s.pixels).dtype) for s in volume.stacks})
        except Exception as err:  # noqa: BLE001 - one unreadable series is reported, never the end of the check
            notes.append(f"series {study}/{series}: not readable: {type(err).__name__}: {err}")
            continue
        rows.append({"study_id": study, "series_id": series, "description": description, "dtype": ",".join(dtypes),
                     **{k: v for k, v in stats.items() if k != "problems"}, "problems": ",".join(stats["problems"])})
    table = pd.DataFrame(rows)
    if table.empty:
        return CheckResult("input_fidelity", FAIL, "no cached series could be read", notes, {"notes": notes})
    has = {p: table[table.problems.str.contains(p)] for p in ("nonfinite", "quantised", "clipped")}
    share = len(has["quantised"]) / len(table)
    status = PASS
    if len(has["clipped"]) or notes or len(has["quantised"]):
        status = WARN
    if len(has["nonfinite"]) or share > cfg.max_quantised_fraction:
        status = FAIL
    details = [f"series {r.study_id}/{r.series_id} ({r.description}, {r.dtype}): {r.why}"
               for r in table[table.problems != ""].head(_MAX_LISTED).itertuples()]
    bad = int((table.problems != "").sum())
    if bad > _MAX_LISTED:
        details.append(f"... {bad - _MAX_LISTED} more (doctor.json)")
    median = int(table.distinct.median())
    summary = (f"{len(table)} series: {median} distinct values (median, fewest {int(table.distinct.min())}), "
               f"{len(has['quantised'])} quantised (8-bit or coarser), {len(has['clipped'])} clipped, "
               f"{len(has['nonfinite'])} with NaN")
    figures = []
    try:
        figures.append(str(_plot_distinct(table, ctx.out / "input_fidelity.png", cfg.min_distinct_values)))
    except Exception as err:  # noqa: BLE001
        notes.append(f"figure failed: {type(err).__name__}: {err}")
    return CheckResult("input_fidelity", status, summary, details + notes,
                       {"series": len(table), "quantised": len(has["quantised"]), "clipped": len(has["clipped"]),
                        "nonfinite": len(has["nonfinite"]), "median_distinct": median, "table": table,
                        "notes": notes}, figures)


@check("slice_order", order=50, help=(
    "InstanceNumber order against the IPP order (spine never uses InstanceNumber: a warning)"))
def check_slice_order(ctx) -> CheckResult:
    cfg, cache = ctx.cfg, ctx.cache
    ok = cache.series[cache.series.status == "ok"]
    rows, notes = [], []
    for study, series, description in zip(ok.study_id.astype(int), ok.series_id.astype(int), ok.description):
        try:
            stacks = cache.record(study, series)["stacks"]
        except Exception as err:  # noqa: BLE001
            notes.append(f"series {study}/{series}: no record: {type(err).__name__}: {err}")
            continue
        rows.append({"study_id": study, "series_id": series, "description": description,
                     "order": series_order([s.get("instance_numbers", []) for s in stacks])})
    table = pd.DataFrame(rows, columns=["study_id", "series_id", "description", "order"])
    if table.empty:
        return CheckResult("slice_order", FAIL, "no series records in the cache", notes, {"notes": notes})
    counts = {k: int((table.order == k).sum()) for k in ("same", "reversed", "shuffled", "missing", "single")}
    disagree = counts["shuffled"] + counts["missing"] + (counts["reversed"] if cfg.warn_on_reversed else 0)
    status = WARN if disagree or notes else PASS
    per_type = {d: {k: int(v) for k, v in g.order.value_counts().items()} for d, g in table.groupby("description")}
    summary = (f"{len(table)} series: InstanceNumber runs with the IPP order in {counts['same']}, against it in "
               f"{counts['reversed']}, neither in {counts['shuffled']}, missing in {counts['missing']} "
               f"({100 * disagree / len(table):.1f}% disagree; spine orders slices by IPP only)")
    details = [f"series {r.study_id}/{r.series_id} ({r.description}): InstanceNumber {r.order}"
               for r in table[table.order.isin(["shuffled", "missing"] + (["reversed"] if cfg.warn_on_reversed
                                                                             else []))].head(_MAX_LISTED).itertuples()]
    return CheckResult("slice_order", status, summary, details + notes,
                       {"series": len(table), **counts, "disagree_fraction": disagree / len(table),
                        "per_type": per_type, "notes": notes})


def _plot_distinct(table: pd.DataFrame, path, threshold: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for description, group in table.groupby("description"):
        ax.hist(np.log10(np.maximum(group.distinct.to_numpy(float), 1)), bins=30, alpha=0.6, label=description)
    ax.axvline(np.log10(threshold), color="red", linestyle="--", label=f"min_distinct_values {threshold}")
    ax.set_xlabel("log10 distinct intensity values per series")
    ax.set_ylabel("series")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
