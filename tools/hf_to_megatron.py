"""Thin script: `python tools/hf_to_megatron.py ...` is `dist-forget convert hf-to-megatron ...` (see --help)."""

import sys

from dist_forget.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "hf-to-megatron", *sys.argv[1:]]))
