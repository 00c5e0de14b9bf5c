"""checkpoint/megatron.py: both readers of our Megatron format check its FORMAT (the per-rank one did not)."""

from __future__ import annotations

import json

import pytest
import torch

from dist_forget.checkpoint import megatron
from dist_forget.errors import UserError


def _folder(tmp_path, fmt: str):
    folder = tmp_path / "step-00000002"
    path = megatron.rank_file(folder, 0)
    path.parent.mkdir(parents=True)
    torch.save({"model": {}, "optimizer": {}, "tp": 1, "tp_rank": 0, "pp": 1, "pp_rank": 0}, path)
    (folder / megatron.META_FILE).write_text(json.dumps({"format": fmt, "tp": 1, "pp": 1, "hf_config": {}}))
    return folder


def test_a_rank_file_of_another_format_is_refused_in_one_line(tmp_path):
    folder = _folder(tmp_path, "someone-elses-v9")
    for read in (lambda: megatron.load_rank_state(folder, 0, 1), lambda: megatron.read_folder(folder, False)):
        with pytest.raises(
            UserError, match="format 'someone-elses-v9' is not 'dist-forget-megatron-v1'"
        ) as info:
            read()
        assert "\n" not in str(info.value)


def test_a_rank_file_of_our_format_loads(tmp_path):
    state = megatron.load_rank_state(_folder(tmp_path, megatron.FORMAT), 0, 1)
    assert (state["tp"], state["tp_rank"], state["pp"], state["pp_rank"]) == (1, 0, 1, 0)
