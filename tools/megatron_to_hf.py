"""Thin script: `python tools/megatron_to_hf.py ...` is `dist-forget convert megatron-to-hf ...` (see --help)."""

import sys

from dist_forget.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "megatron-to-hf", *sys.argv[1:]]))
