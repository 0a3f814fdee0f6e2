"""Regenerate the committed YAML for kustomize after changing api/ or manifests/.

python -m manifests --write     rewrite manifests/crds/*.yaml, manifests/deploy/*.yaml and
                                manifests/kustomization.yaml (and delete files no longer generated)
python -m manifests             only check: list the stale files and exit 1 if there are any
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from manifests.layout import PACKAGE_DIR, REGENERATE_COMMAND, stale_files, write


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m manifests",
        description=f"Check, or with --write regenerate, the committed YAML under {PACKAGE_DIR}.",
    )
    parser.add_argument(
        "--write", action="store_true", help="rewrite the stale files instead of listing them"
    )
    args = parser.parse_args(argv)
    if args.write:
        for name in write():
            print(f"updated {name}")
        return 0
    stale = stale_files()
    for name in stale:
        print(f"stale: {name}", file=sys.stderr)
    if stale:
        print(f"run `{REGENERATE_COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
