"""The inference notebook, rendered from ``template.ipynb`` (a valid notebook itself, with ``{{NAME}}`` tokens).

In code cells a token becomes a Python literal (``{{CODE_DATASET}}`` -> ``"spine-code"``), in markdown cells
plain text. Outputs and execution counts are cleared. Written as nbformat v4 JSON with the standard library,
so building needs no Jupyter package (the tests and the self-test validate it with nbformat).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TEMPLATE = Path(__file__).with_name("template.ipynb")
_TOKEN = re.compile(r"\{\{([A-Z_]+)\}\}")


def render(values: dict[str, object], template: Path = TEMPLATE) -> dict:
    """The notebook (nbformat v4 as a dict) with every token replaced; KeyError for a token without a value."""
    for key, value in values.items():
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise TypeError(f"{key}: only strings and lists of strings are literals in both JSON and Python")
    nb = json.loads(template.read_text())
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code":
            source = _TOKEN.sub(lambda m: json.dumps(values[m.group(1)]), source)
            cell["outputs"] = []
            cell["execution_count"] = None
        else:
            source = _TOKEN.sub(lambda m: str(values[m.group(1)]), source)
        cell["source"] = source.splitlines(keepends=True)
    return nb


def write(nb: dict, path: Path) -> Path:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return path
