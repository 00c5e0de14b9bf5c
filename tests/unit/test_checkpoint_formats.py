"""checkpoint/megatron.py: the reader of our legacy Megatron folders checks its FORMAT."""

from __future__ import annotations

import json

import pytest
import torch

from dist_forget.checkpoint import megatron
from dist_forget.errors import UserError


def _folder(tmp_path, fmt: str):
    folder = tmp_path / "meg"
    path = megatron.rank_file(folder, 0)
    path.parent.mkdir(parents=True)
    torch.save({"model": {}, "optimizer": {}, "tp": 1, "tp_rank": 0, "pp": 1, "pp_rank": 0}, path)
    (folder / megatron.META_FILE).write_text(json.dumps({"format": fmt, "tp": 1, "pp": 1, "hf_config": {}}))
    return folder


def test_a_folder_of_another_format_is_refused_in_one_line(tmp_path):
    folder = _folder(tmp_path, "someone-elses-v9")
    with pytest.raises(UserError, match="format 'someone-elses-v9' is not 'dist-forget-megatron-v1'") as info:
        megatron.read_folder(folder, False)
    assert "\n" not in str(info.value)


def test_a_folder_of_our_format_is_read(tmp_path):
    assert megatron.read_meta(_folder(tmp_path, megatron.FORMAT))["tp"] == 1
