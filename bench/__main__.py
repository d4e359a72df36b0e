"""``python -m bench [NAME ...]``: run the benchmarks (all by default) one after another."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time

import bench
from sead.logging import configure_logging


def _names() -> list[str]:
    modules = pkgutil.iter_modules(bench.__path__)
    return sorted(m.name for m in modules if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(_names())}")
    args = parser.parse_args(argv)
    configure_logging("warning")
    unknown = set(args.names) - set(_names())
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; "
                     f"choose from {', '.join(_names())}")
    failed = []
    for name in args.names or _names():
        print(f"\n=== bench/{name}.py ===", flush=True)
        start = time.monotonic()
        status = importlib.import_module(f"bench.{name}").main([])
        print(f"=== {name}: exit {status} in {time.monotonic() - start:.0f} s ===", flush=True)
        if status:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
