"""``python -m spine.kaggle build|selftest key=value ...``.

    build     runs=[<run dir>,...] out=dist/kaggle [wheels=installed|download] [user=...] [...]
    selftest  build=dist/kaggle data_dir=<RSNA-layout folder> [work=<folder>] [keep=true]

Exit codes: 0 done, 1 failed (the message says why), 2 bad command line or config.
"""

from __future__ import annotations

import sys

from spine.config import compose_or_exit

USAGE = __doc__.split("\n\n")[1].rstrip()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(f"usage: python -m spine.kaggle COMMAND key=value ...\n\n{USAGE}\n\ndocs/kaggle.md has the keys.")
        return 0 if args else 2
    command, overrides = args[0], args[1:]
    if command == "build":
        from spine.kaggle.config import BuildConfig

        cfg = compose_or_exit("kaggle_build", overrides, BuildConfig)
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

        cfg = compose_or_exit("kaggle_selftest", overrides, SelftestConfig)
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
