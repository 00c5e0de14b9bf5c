"""Thin script: `python tools/reshard.py ...` is `dist-forget convert reshard ...` (see --help)."""

import sys

from dist_forget.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "reshard", *sys.argv[1:]]))
