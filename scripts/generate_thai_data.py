"""Print the demo's seeded synthetic Thai data as JSON (synthetic data only).

The output is exactly what the demo backends serve for the same seed and count, because
it comes from the same generator functions (xroad_hub.demo.synthetic):

    people               everyone the DOPA population registry knows: 2 x COUNT seeded
                         people (valid citizen ids, Thai names with transliterations,
                         title, sex, status), then their generated household members
    house_registrations  houses (ทะเบียนบ้าน): 11-digit house id, address in Thai and
                         English, members with role (head/resident) and date moved in
    companies            COUNT companies of the DBD registry: valid juristic ids, names,
                         addresses, directors drawn from the seeded people

    dopa_app(seed, count) serves people and house_registrations over SOAP;
    dbd_app(seed, count) serves companies over REST. Dates are ISO 8601 (C.E.).

Examples:
    python scripts/generate_thai_data.py --seed 2569 --count 200 --out thai-data.json
    python scripts/generate_thai_data.py --count 3 | jq '.people[0]'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xroad_hub.demo.synthetic import companies, demo_people, population


def dataset(seed: int, count: int) -> dict[str, object]:
    """The demo data of ``dopa_app(seed, count)`` and ``dbd_app(seed, count)``."""
    persons = demo_people(seed, count)
    registry = population(seed, persons)
    by_id = {p.citizen_id: p for p in persons}
    return {
        "seed": seed,
        "count": count,
        "people": [c.as_dict() for c in registry.citizens],
        "house_registrations": [h.as_dict() for h in registry.houses],
        "companies": [c.as_dict(by_id) for c in companies(seed, count, persons)],
    }


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=2569, help="same seed, same data (2569)")
    parser.add_argument(
        "--count",
        type=_positive,
        default=200,
        help="companies, as the backends' count: 2 x COUNT seeded people (200)",
    )
    parser.add_argument("--out", type=Path, help="write to this file (UTF-8) instead of stdout")
    parser.add_argument("--compact", action="store_true", help="one line, no indentation")
    args = parser.parse_args(argv)
    text = json.dumps(
        dataset(args.seed, args.count),
        ensure_ascii=False,  # Thai script stays readable
        indent=None if args.compact else 2,
    )
    data = (text + "\n").encode("utf-8")
    if args.out is None:
        # Bytes, not text: a console or pipe with a non-UTF-8 locale must not mangle Thai.
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        args.out.write_bytes(data)
        print(f"wrote {args.out} ({len(data)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
