"""Every command has a console script (pyproject.toml ``[project.scripts]``), and its ``--help`` works and names it.

The entry points are called in-process (CI installs fresh, the scripts themselves need not be on PATH here);
``python -m spine.<command>`` runs the same ``main``.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
COMMANDS = {  # console script -> the module that python -m runs
    "spine-score": "spine.metric",
    "spine-train": "spine.train.__main__",
    "spine-predict": "spine.predict.__main__",
    "spine-doctor": "spine.doctor.__main__",
    "spine-report": "spine.report.__main__",
    "spine-preprocess": "spine.preprocess.__main__",
    "spine-synth": "spine.synth.__main__",
    "spine-kaggle": "spine.kaggle.__main__",
}


def _scripts() -> dict[str, str]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def test_every_command_is_declared_as_a_console_script():
    assert _scripts() == {name: f"{module}:main" for name, module in COMMANDS.items()}


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_console_script_help_exits_0_and_names_the_script(script, capsys):
    module, attr = _scripts()[script].split(":")
    main = getattr(importlib.import_module(module), attr)
    try:
        code = main(["--help"])
    except SystemExit as done:  # argparse and compose_or_exit exit; the others return their code
        code = done.code
    assert code in (0, None), script
    assert capsys.readouterr().out.startswith(f"usage: {script} "), script
