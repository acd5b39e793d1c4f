"""The README's demo command, end to end on the tiny preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end_and_the_oracle_wins(tmp_path: Path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(out), "--preset", "tiny"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    result_json = json.loads((out / "scores.json").read_text())
    scores = {row["name"]: row["score"] for row in result_json["test"]}
    assert scores["oracle (best possible)"] < scores["class prior"]
    assert 0 < scores["spine (this demo)"] < 5  # spine-predict's submission of the test studies was scored
    assert 0 < result_json["cv"]["score"] < 5  # the grading stage's cross-validation
    assert (out / "preview.png").exists() and (out / "data" / "train.csv").exists()
    assert (out / "submission.csv").exists() and (out / "runs" / "grading" / "calibration.json").exists()
    assert "outputs in" in result.stdout
    assert (out / "report" / "report.html").is_file() and "the run report:" in result.stdout  # spine-report
