"""`python -m edgepart.variants show|retrain`: list a family's variants, or retrain the shipped digits family."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edgepart.errors import EdgepartError
from edgepart.variants.family import (
    FamilyManifest,
    load_manifest,
    retrain_family,
    shipped_manifest_path,
)


def _table(manifest: FamilyManifest) -> str:
    rows = [f"family {manifest.family.name}: {manifest.family.task}", "",
            "| variant | model | accuracy | kind | held-out |", "|---|---|---|---|---|"]
    for v in manifest.family.variants:
        a = v.accuracy
        held = f"{a.correct}/{a.count}" if a.count is not None else "-"
        rows.append(f"| {v.name} | {v.model.name} | {a.value:.4f} | {a.kind} | {held} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgepart.variants", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print a family's variants and accuracies")
    show.add_argument("manifest", nargs="?", default=str(shipped_manifest_path()))
    retrain = sub.add_parser("retrain", help="train the digits family and write weights + manifest")
    retrain.add_argument("--out", default=str(shipped_manifest_path().parent),
                         help="folder for the weights and manifest.json (default: the shipped family's)")
    retrain.add_argument("--only", nargs="*", help="variants to train (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            print(_table(load_manifest(args.manifest)))
        else:
            started = time.perf_counter()
            manifest = retrain_family(Path(args.out), variants=args.only)
            print(_table(manifest))
            print(f"\nwrote {Path(args.out) / 'manifest.json'} in {time.perf_counter() - started:.1f} s")
    except EdgepartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
