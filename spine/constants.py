"""Names of the RSNA 2024 lumbar spine task: conditions, levels, severities and the strings built from them.

Every other module builds column names, row ids and label strings from here, so that the spelling of the
competition files lives in exactly one place.
"""

from __future__ import annotations

# Disc levels, cranial to caudal. `LEVELS` is the spelling of column names and row ids, `LEVEL_NAMES` the
# spelling of train_label_coordinates.csv.
LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
LEVEL_NAMES: tuple[str, ...] = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")

# Conditions in the column order of train.csv. Left/right are the patient's sides (world LPS +x is left).
CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
CONDITION_NAMES: tuple[str, ...] = (
    "Spinal Canal Stenosis",
    "Left Neural Foraminal Narrowing",
    "Right Neural Foraminal Narrowing",
    "Left Subarticular Stenosis",
    "Right Subarticular Stenosis",
)

# Metric groups: each condition belongs to one group of the competition metric.
CONDITION_GROUP: dict[str, str] = {
    "spinal_canal_stenosis": "spinal",
    "left_neural_foraminal_narrowing": "foraminal",
    "right_neural_foraminal_narrowing": "foraminal",
    "left_subarticular_stenosis": "subarticular",
    "right_subarticular_stenosis": "subarticular",
}
GROUPS: tuple[str, ...] = ("spinal", "foraminal", "subarticular")

# The three grades, as written in train.csv, and the matching submission columns.
SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
PROB_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")
SEVERITY_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)  # metric sample weight of each true grade

# Series types, as written in *_series_descriptions.csv.
SERIES_TYPES: tuple[str, ...] = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")
# Other spellings of a series type met in listings (after case and spaces are normalised, see
# `canonical_description`).
SERIES_VARIANTS: dict[str, str] = {"sagittal t2": "Sagittal T2/STIR", "sagittal stir": "Sagittal T2/STIR"}

# The series on which each condition is labelled in train_label_coordinates.csv.
CONDITION_SERIES: dict[str, str] = {
    "spinal_canal_stenosis": "Sagittal T2/STIR",
    "left_neural_foraminal_narrowing": "Sagittal T1",
    "right_neural_foraminal_narrowing": "Sagittal T1",
    "left_subarticular_stenosis": "Axial T2",
    "right_subarticular_stenosis": "Axial T2",
}


def label_column(condition: str, level: str) -> str:
    """train.csv column of one condition at one level, e.g. ``spinal_canal_stenosis_l4_l5``."""
    return f"{condition}_{level}"


LABEL_COLUMNS: tuple[str, ...] = tuple(label_column(c, lv) for c in CONDITIONS for lv in LEVELS)


def row_id(study_id: int | str, condition: str, level: str) -> str:
    """Submission row id, e.g. ``1001_left_neural_foraminal_narrowing_l4_l5``."""
    return f"{study_id}_{condition}_{level}"


def study_row_ids(study_id: int | str) -> list[str]:
    """The 25 submission row ids of one study, in train.csv column order."""
    return [row_id(study_id, c, lv) for c in CONDITIONS for lv in LEVELS]


def parse_row_id(rid: str) -> tuple[int, str, str]:
    """Inverse of :func:`row_id`: ``(study_id, condition, level)``."""
    study, rest = rid.split("_", 1)
    condition, level = rest[: -len("_l1_l2")], rest[-len("l1_l2"):]
    if condition not in CONDITIONS or level not in LEVELS:
        raise ValueError(f"not a submission row id: {rid!r}")
    return int(study), condition, level


def condition_from_name(name: str) -> str:
    """``'Left Neural Foraminal Narrowing'`` -> ``'left_neural_foraminal_narrowing'``."""
    return CONDITIONS[CONDITION_NAMES.index(name)]


def level_from_name(name: str) -> str:
    """``'L4/L5'`` -> ``'l4_l5'``."""
    return LEVELS[LEVEL_NAMES.index(name)]


def _name_key(text: str) -> str:
    """Case-, space- and separator-insensitive key of a condition or level name: ``' Spinal_canal  stenosis'`` ->
    ``'spinal canal stenosis'``, ``'l1-l2'`` / ``'L1 / L2'`` / ``'l1_l2'`` -> ``'l1 l2'``."""
    for separator in "_-/":
        text = text.replace(separator, " ")
    return " ".join(text.split()).casefold()


_CONDITION_BY_KEY: dict[str, str] = {_name_key(n): n for n in CONDITION_NAMES} | {
    _name_key(c): n for c, n in zip(CONDITIONS, CONDITION_NAMES)}
_LEVEL_BY_KEY: dict[str, str] = {_name_key(n): n for n in LEVEL_NAMES}


def canonical_condition(text: object) -> str | None:
    """The competition's spelling (one of ``CONDITION_NAMES``) of a condition written in another case, with other
    spaces, or as its column name (``'spinal canal stenosis'``, ``'spinal_canal_stenosis'``); None for anything
    that names no condition unambiguously."""
    return _CONDITION_BY_KEY.get(_name_key(text)) if isinstance(text, str) else None


def canonical_level(text: object) -> str | None:
    """The competition's spelling (one of ``LEVEL_NAMES``) of a disc level written in another case or with another
    separator (``'l1/l2'``, ``'L1-L2'``, ``'L1 / L2'``, ``'l1_l2'``); None for anything else (``'L6/S1'``)."""
    return _LEVEL_BY_KEY.get(_name_key(text)) if isinstance(text, str) else None


def _description_key(text: str) -> str:
    """Case- and space-insensitive key of a series description: ``' SAGITTAL T2 / STIR '`` -> ``'sagittal t2/stir'``."""
    return " ".join(text.replace("/", " / ").split()).replace(" / ", "/").casefold()


_SERIES_BY_KEY: dict[str, str] = {**{_description_key(t): t for t in SERIES_TYPES}, **SERIES_VARIANTS}


def canonical_description(text: object) -> tuple[str | None, bool]:
    """The series type (one of ``SERIES_TYPES``) a description names, and whether it was spelled otherwise.

    Case, stray and repeated spaces do not matter, and the variants of ``SERIES_VARIANTS`` are mapped
    (``'Sagittal T2'`` -> ``'Sagittal T2/STIR'``). ``(None, False)`` for anything else (also a non-string).
    """
    if not isinstance(text, str):
        return None, False
    name = _SERIES_BY_KEY.get(_description_key(text))
    return name, name is not None and text != name


def series_type(description: object) -> str:
    """The series type a description names (`canonical_description`), else the description stripped ('' for
    a missing one)."""
    name, _ = canonical_description(description)
    if name is not None:
        return name
    return description.strip() if isinstance(description, str) else ""


def condition_side(condition: str) -> float:
    """+1 for a patient-left condition, -1 for a right one, 0 for a midline one (its sign along world +x)."""
    return 1.0 if condition.startswith("left") else -1.0 if condition.startswith("right") else 0.0
