"""``python -m spine.kaggle build|selftest key=value ...``.

    build     runs=[<run dir>,...] out=dist/kaggle [wheels=installed|download] [user=...] [...]
    selftest  build=dist/kaggle data_dir=<RSNA-layout folder> [work=<folder>] [keep=true]

Exit codes: 0 done, 1 failed (the message says why), 2 bad command line or config.
"""

from __future__ import annotations

import sys

from spine.cli import compose_or_exit
from spine.errors import command

PROG = "spine-kaggle"  # the console script; python -m spine.kaggle is the same command
USAGE = __doc__.split("\n\n")[1].rstrip()
BUILD_HELP = """python -m spine.kaggle build: the two Kaggle datasets and the notebook of an offline submission.

Writes into out/: code/ (the spine wheel plus the wheels of the dependencies the Kaggle image lacks, repacked
from this environment), weights/ (the run folders, inference files only), inference.ipynb (installs spine with
pip install --no-index and runs spine-predict), kernel-metadata.json and a README with the upload commands.
docs/kaggle.md."""
SELFTEST_HELP = """python -m spine.kaggle selftest: run a build's notebook as Kaggle would, on this machine.

Executes inference.ipynb headless in a fresh venv on a fake /kaggle tree (the build's datasets and the test
split of data_dir), checks that spine and the bundled wheels were installed from the bundle, and scores the
submission against the test labels. docs/kaggle.md, "Self-test"."""


@command("kaggle")
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(f"usage: {PROG} COMMAND key=value ...\n\n{USAGE}\n\n"
              f"{PROG} COMMAND --help lists its keys; docs/kaggle.md explains them.")
        return 0 if args else 2
    command, overrides = args[0], args[1:]
    if command == "build":
        from spine.kaggle.config import BuildConfig

        cfg = compose_or_exit("kaggle_build", overrides, BuildConfig, BUILD_HELP, prog=f"{PROG} build")
        from spine.kaggle.build import BuildError, build
        from spine.kaggle.wheels import WheelError

        try:
            build(cfg)
        except (BuildError, WheelError) as err:
            print(f"kaggle build: error: {err}", file=sys.stderr)
            return 1
        return 0
    if command == "selftest":
        from spine.kaggle.config import SelftestConfig

        cfg = compose_or_exit("kaggle_selftest", overrides, SelftestConfig, SELFTEST_HELP,
                              prog=f"{PROG} selftest")
        from spine.kaggle.selftest import SelftestError, selftest

        try:
            selftest(cfg)
        except SelftestError as err:
            print(f"kaggle selftest: FAILED: {err}", file=sys.stderr)
            return 1
        return 0
    print(f"unknown command {command!r}: build or selftest\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
