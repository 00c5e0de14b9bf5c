"""HFMixedStream: the exact stream as HF-style `{"input_ids", "labels"}` items, sequence for sequence the
stream a run reads (one sequence per item, or whole batches; DataLoader workers; a resume position)."""

from __future__ import annotations

import pytest
import torch

from dist_forget.data import HFMixedStream, MixedStream, MixtureConfig
from dist_forget.errors import UserError


def _cfg(tiny_data, p: float = 0.25) -> MixtureConfig:
    return MixtureConfig(target=str(tiny_data.code), pretrain=str(tiny_data.english), inject_fraction=p)


def _reference(cfg: MixtureConfig, n: int, start: int = 0) -> torch.Tensor:
    stream = MixedStream(cfg)
    stream.consumed = start
    return stream.next_batch(n).input_ids


def test_one_sequence_per_item_is_the_stream_in_order(tiny_data):
    cfg = _cfg(tiny_data)
    items = list(HFMixedStream(cfg, num_sequences=24))
    assert len(items) == 24 and set(items[0]) == {"input_ids", "labels"}
    ids = torch.stack([it["input_ids"] for it in items])
    assert ids.dtype == torch.int64 and ids.shape == (24, tiny_data.seq_len)
    assert torch.equal(ids, _reference(cfg, 24))
    assert all(torch.equal(it["labels"], it["input_ids"]) for it in items)
    resumed = torch.stack([it["input_ids"] for it in HFMixedStream(cfg, start_consumed=10, num_sequences=6)])
    assert torch.equal(resumed, _reference(cfg, 16)[10:])


def test_batches_split_over_dataloader_workers_keep_the_order(tiny_data):
    cfg = _cfg(tiny_data)
    data = HFMixedStream(cfg, batch_size=4, num_sequences=32)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    ids = torch.cat([b["input_ids"] for b in loader])
    assert torch.equal(ids, _reference(cfg, 32))


def test_single_sequences_refuse_several_workers_and_bad_sizes(tiny_data):
    cfg = _cfg(tiny_data)
    loader = torch.utils.data.DataLoader(HFMixedStream(cfg, num_sequences=4), batch_size=2, num_workers=2)
    with pytest.raises(UserError, match="num_workers=0"):
        list(loader)
    with pytest.raises(UserError, match="not a multiple of batch_size"):
        HFMixedStream(cfg, batch_size=4, num_sequences=6)
    with pytest.raises(UserError, match="must be in"):
        HFMixedStream(_cfg(tiny_data, p=1.5))
