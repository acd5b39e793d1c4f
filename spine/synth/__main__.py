"""``python -m spine.synth out_dir=data/synth preset=small seed=0``: write a synthetic RSNA-layout dataset.

Studies in exactly the layout of the RSNA 2024 competition (train.csv, train_label_coordinates.csv,
*_series_descriptions.csv, DICOM series in train_images/ and test_images/, sample_submission.csv), with anatomy
that carries the grades, plus the hidden test labels and a Bayes-optimal oracle submission. The preset sets the
size and the acquisition ranges; any key below overrides it. docs/synthetic.md.
"""

from __future__ import annotations

import sys

from spine.cli import compose_or_exit
from spine.errors import command
from spine.synth.config import SynthConfig


@command("synth")
def main(argv: list[str] | None = None) -> int:
    cfg = compose_or_exit("synth", sys.argv[1:] if argv is None else argv, SynthConfig, __doc__, prog="spine-synth")
    from spine.synth.generate import generate  # numpy/pydicom import only once the config is valid

    print(f"[synth] preset={cfg.preset} seed={cfg.seed}: {cfg.n_train} train + {cfg.n_test} test studies "
          f"-> {cfg.out_dir}", flush=True)
    out = generate(cfg)  # an out_dir in the way: one line, exit code 2 (spine.errors.command)
    import json

    card = json.loads((out / "dataset.json").read_text())
    print(f"[synth] wrote {out} in {card['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
