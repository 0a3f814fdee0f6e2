"""Operator image figures (`spo image build`): a cold build (empty cache), a second build of the same
sources (digest must not move), a rebuild after one .py file changes (goal: under 20 s), and the image's
size (goal: under 200 MB). The build reads a copy of this checkout, so the change never touches it.

    .venv/bin/python bench/image_bench.py [--cache-dir DIR]   (a warm DIR skips the cold figure's base)
"""

from __future__ import annotations

import argparse
import gzip
import json
import tarfile
import tempfile
import time
from pathlib import Path

from spo.imagerecipe import RECIPE
from spo.operator_image import REPO_ROOT, BuiltImage, build_operator_image, copy_sources

CHANGED_FILE = "spo/cli.py"


def timed(label: str, build: tuple[Path, Path, Path]) -> BuiltImage:
    output, cache, source = build
    started = time.monotonic()
    built = build_operator_image(output, cache_dir=cache, source=source)
    elapsed = time.monotonic() - started
    print(f"{label:<32} {elapsed:7.1f} s  rebuilt {', '.join(built.rebuilt):<30} {built.digest}")
    return built


def layers(layout: Path) -> list[bytes]:
    """The layer blobs of the one image in an OCI layout tar."""
    with tarfile.open(layout) as archive:

        def read(name: str) -> bytes:
            member = archive.extractfile(name)
            assert member is not None
            return member.read()

        (descriptor,) = json.loads(read("index.json"))["manifests"]
        manifest = json.loads(read("blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")))
        return [
            read("blobs/sha256/" + layer["digest"].removeprefix("sha256:")) for layer in manifest["layers"]
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, help="a layer cache to use (default: a new, empty one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spo-image-bench-") as scratch:
        work = Path(scratch)
        source = work / "source"
        copy_sources(REPO_ROOT, (*RECIPE.project_sources, RECIPE.requirements_source), source)
        cache = args.cache_dir or work / "cache"
        first = timed("first build" + ("" if args.cache_dir else " (cold)"), (work / "1.tar", cache, source))
        again = timed("same sources again", (work / "2.tar", cache, source))
        with (source / CHANGED_FILE).open("a") as changed:
            changed.write("# a code change\n")
        after = timed(f"after changing {CHANGED_FILE}", (work / "3.tar", cache, source))
        print(f"digest stable across builds:    {first.digest == again.digest}")
        print(f"digest moved with the change:   {after.digest != first.digest}")
        sizes = ", ".join(f"{size / 1e6:.1f}" for size in first.layer_sizes)
        print(f"image size (uncompressed):      {sum(first.layer_sizes) / 1e6:.1f} MB (layers {sizes} MB)")
        print(f"layout tar:                     {(work / '1.tar').stat().st_size / 1e6:.1f} MB")
        # What a registry would store and a pull would transfer: each layer gzipped.
        compressed = sum(len(gzip.compress(layer, compresslevel=6)) for layer in layers(work / "1.tar"))
        print(f"image size (gzipped layers):    {compressed / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
