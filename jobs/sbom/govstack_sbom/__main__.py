"""``python -m govstack_sbom --root DIR --image NAME [--component PURL ...] -o FILE``"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from govstack_sbom import __version__
from govstack_sbom.build import SbomError, dumps, image_sbom, validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="govstack-sbom", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="the image's files (copied into this stage)")
    parser.add_argument("--image", required=True, help="the image's tag, e.g. govstack/postgres:15")
    parser.add_argument("--component", action="append", default=[], metavar="PURL",
                        help="a component the package databases do not know (a binary taken out of a wheel)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        text = dumps(image_sbom(args.root, args.image, args.component, tool_version=__version__))
        validate(text)
    except (SbomError, ValueError) as error:
        print(f"govstack-sbom: {error}", file=sys.stderr)
        return 1
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
