"""Thin script: `python tools/zero_to_hf.py ...` is `dist-forget convert zero-to-hf ...` (see --help)."""

import sys

from dist_forget.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "zero-to-hf", *sys.argv[1:]]))
