"""Thin wrapper: `python tools/fit.py --runs runs.csv --out fit/` is `dist-forget fit ...`."""

import sys

from dist_forget.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit", *sys.argv[1:]]))
