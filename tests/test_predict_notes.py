"""``spine-predict`` says when its input was altered: the notes of the reader and the volume builder (files
skipped, stacks left out, slices missing) reach the study's row of ``<out>.log.csv``, and the study is still
answered by the model from what was left."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from spine.constants import PROB_COLUMNS, study_row_ids
from spine.predict.__main__ import main

CLEAN, ALTERED = 1000, 1001


def _plant(src: Path, dst: Path) -> None:
    """Two clones of the first test study: one untouched, one with a corrupt file in the middle of its Sagittal
    T2/STIR series and the Axial T2 slices copied into its Sagittal T1 folder."""
    listing = pd.read_csv(src / "test_series_descriptions.csv")
    source = int(listing.study_id.iloc[0])
    rows = []
    for study in (CLEAN, ALTERED):
        shutil.copytree(src / "test_images" / str(source), dst / "test_images" / str(study))
        rows.append(listing[listing.study_id == source].assign(study_id=study))
    own = rows[-1].set_index("series_description").series_id
    folder = {d: dst / "test_images" / str(ALTERED) / str(s) for d, s in own.items()}
    files = sorted(folder["Sagittal T2/STIR"].glob("*.dcm"), key=lambda p: int(p.stem))
    middle = files[len(files) // 2]
    middle.write_bytes(middle.read_bytes()[: middle.stat().st_size // 2])
    for path in folder["Axial T2"].glob("*.dcm"):
        shutil.copy(path, folder["Sagittal T1"] / f"axial_{path.name}")
    pd.concat(rows).to_csv(dst / "test_series_descriptions.csv", index=False)
    ids = [r for s in (CLEAN, ALTERED) for r in study_row_ids(s)]
    pd.DataFrame({"row_id": ids, **{c: 1 / 3 for c in PROB_COLUMNS}}).to_csv(dst / "sample_submission.csv",
                                                                             index=False)


def test_altered_input_is_named_in_the_log(tiny_runs, tiny_dataset, tmp_path):
    _plant(tiny_dataset, tmp_path / "data")
    out = tmp_path / "submission.csv"
    assert main([f"data_dir={tmp_path / 'data'}", f"runs=[{tiny_runs[0]},{tiny_runs[1]}]", f"out={out}",
                 "device=cpu", "progress=false"]) == 0
    log = pd.read_csv(tmp_path / "submission.log.csv", keep_default_na=False).set_index("study_id")
    clean, altered = log.loc[CLEAN], log.loc[ALTERED]
    assert (clean.status, clean.answer, clean.reason) == ("ok", "model", ""), dict(clean)
    assert (altered.status, altered.answer) == ("ok", "model"), dict(altered)  # notes only: the model answered
    reason = altered.reason
    assert "skipped files (Sagittal T2/STIR series" in reason and "1 left out" in reason, reason
    assert "volume notes (Sagittal T2/STIR series" in reason and "uneven steps" in reason, reason
    assert "volume notes (Sagittal T1 series" in reason, reason
    # the copied axial series has one block or several (generator v2): each is left out
    assert re.search(r"left out \d+ stack\(s\) of another orientation \(axial", reason), reason
    assert "the series is sagittal" in reason
    sub = pd.read_csv(out)
    assert len(sub) == 50
    p = sub[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
