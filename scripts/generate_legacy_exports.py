"""Write the demo's seeded legacy exports (synthetic data only).

    dol-titledeeds   DOL title deeds: fixed width, 200 bytes + CRLF, TIS-620, B.E. dates
                     (schemas/dol-titledeeds.layout.toml), as DIR/titledeeds-25681121.txt
    rd-taxclearance  RD tax clearance: CSV with header, cp874, CRLF
                     (schemas/rd-taxclearance.layout.toml), as the file given

Owners and companies are those of the DBD demo registry with the same seed, and a few
records are broken on purpose. ``xroad-hub up`` writes the same files into its data
directory when they are missing; this script is for looking at them, or for replacing an
export (atomically) to watch a running adapter switch versions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xroad_hub.demo.legacy_exports import (
    DOL_EXPORT_NAME,
    rd_taxclearance_csv,
    title_deed_lines,
    write_atomic,
)
from xroad_hub.demo.synthetic import people


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=["dol-titledeeds", "rd-taxclearance"])
    parser.add_argument("target", type=Path, help="directory (dol-titledeeds) or file (rd)")
    parser.add_argument("--seed", type=int, default=2569, help="same seed, same data (2569)")
    parser.add_argument(
        "--count",
        type=int,
        help="dol-titledeeds: this many deeds of random demo people instead of the "
        "registry-matched set (for load tests)",
    )
    parser.add_argument("--name", default=DOL_EXPORT_NAME, help="dol-titledeeds: file name")
    parser.add_argument("--no-broken", action="store_true", help="no deliberately broken records")
    args = parser.parse_args(argv)
    broken = not args.no_broken
    if args.kind == "dol-titledeeds":
        owners = people(args.seed, 20_000) if args.count else None
        lines = title_deed_lines(args.seed, args.count, owners=owners, broken=broken)
        path = args.target / args.name
        write_atomic(path, b"".join(line + b"\r\n" for line in lines))
    else:
        path = args.target
        write_atomic(path, rd_taxclearance_csv(args.seed, broken=broken))
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
