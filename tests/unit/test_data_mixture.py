"""The exact injected stream, on real shards: fraction, D, rank/worker partition, resume, fingerprint."""

from __future__ import annotations

import copy
import json
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_forget.data.documents import read_documents
from dist_forget.data.mixture import (
    MixedStream,
    MixedStreamDataset,
    MixtureConfig,
    reshard_state_dict,
    validation_batches,
)
from dist_forget.data.shards import ShardConfig, ShardSet, write_shards
from dist_forget.errors import UserError

DATA = Path(__file__).parents[1] / "data"


def _cfg(tiny_data, p=0.05, d=None, seed=0) -> MixtureConfig:
    return MixtureConfig(
        target=str(tiny_data.code),
        pretrain=str(tiny_data.english),
        inject_fraction=p,
        target_tokens=d,
        seed=seed,
    )


def _take(stream: MixedStream, steps: int, b: int):
    batches = [stream.next_batch(b) for _ in range(steps)]
    return (
        torch.cat([x.input_ids for x in batches]),
        torch.cat([x.is_pretrain for x in batches]),
        torch.cat([x.global_indices for x in batches]),
    )


@pytest.mark.parametrize("p", [0.0, 0.001, 0.01, 0.05, 0.5])
def test_fraction_is_exact_at_every_prefix(tiny_data, p):
    stream = MixedStream(_cfg(tiny_data, p))
    _, is_pre, idx = _take(stream, 400, 7)  # 2800 sequences, read from the shards
    assert torch.equal(idx, torch.arange(2800))
    counts = np.cumsum(is_pre.numpy())
    exact = Fraction(str(p))
    assert all(counts[k - 1] == (k * exact).__floor__() for k in range(1, 2801))
    # and over a million positions through the pure index map (no reading)
    many = np.arange(1_000_000, dtype=np.int64)
    pre = np.cumsum(stream.sources(many)[0])
    assert pre[-1] == (1_000_000 * exact).__floor__()
    ks = np.arange(1, 1_000_001, dtype=np.int64)
    assert np.array_equal(pre, ks * exact.numerator // exact.denominator)


def test_pretrain_sequences_come_from_pretrain_shards(tiny_data):
    stream = MixedStream(_cfg(tiny_data, 0.5))
    ids, is_pre, _ = _take(stream, 10, 8)
    english = {
        tuple(r)
        for r in ShardSet(tiny_data.english).gather(np.arange(len(ShardSet(tiny_data.english)))).tolist()
    }
    code = {
        tuple(r) for r in ShardSet(tiny_data.code).gather(np.arange(len(ShardSet(tiny_data.code)))).tolist()
    }
    assert all(tuple(r) in english for r in ids[is_pre].tolist())
    assert all(tuple(r) in code for r in ids[~is_pre].tolist())


def test_exactly_d_unique_target_tokens_repeated_over_epochs(tiny_data):
    seq = tiny_data.seq_len
    stream = MixedStream(_cfg(tiny_data, 0.05, d=100 * seq))
    assert stream.unique_target_tokens == 100 * seq
    ids, is_pre, _ = _take(stream, 50, 8)  # 400 sequences: 380 target = 3.8 epochs over 100
    tgt = ids[~is_pre]
    assert len(tgt) == 380
    rows = {tuple(r) for r in tgt.tolist()}
    assert len(rows) <= 100
    epochs = [stream.target_rows(np.arange(e * 100, (e + 1) * 100)) for e in range(3)]
    assert all(sorted(e.tolist()) == sorted(epochs[0].tolist()) for e in epochs)  # the same 100 sequences
    assert len(set(epochs[0].tolist())) == 100
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    tokens = ShardSet(tiny_data.code).gather(np.sort(epochs[0]))
    assert tokens.size == 100 * seq
    assert rows == {tuple(r) for r in tokens.tolist()}
    # D not a multiple of seq_len: ceil(D / seq_len) sequences
    assert MixedStream(_cfg(tiny_data, 0.0, d=10 * seq + 1)).unique_target_tokens == 11 * seq
    # another seed picks another subset
    other = MixedStream(_cfg(tiny_data, 0.05, d=100 * seq, seed=1)).target_rows(np.arange(100))
    assert set(other.tolist()) != set(epochs[0].tolist())


def test_two_ranks_see_the_one_rank_stream(tiny_data):
    one = MixedStream(_cfg(tiny_data, 0.05))
    ranks = [MixedStream(_cfg(tiny_data, 0.05), rank=r, world_size=2) for r in range(2)]
    for _ in range(20):
        full = one.next_batch(8)
        parts = [s.next_batch(4) for s in ranks]
        got = torch.cat([p.global_indices for p in parts])
        order = torch.argsort(got)
        assert torch.equal(got[order], full.global_indices)
        assert torch.equal(torch.cat([p.input_ids for p in parts])[order], full.input_ids)
        assert torch.equal(torch.cat([p.is_pretrain for p in parts])[order], full.is_pretrain)
    assert ranks[0].state_dict() == ranks[1].state_dict()


@pytest.mark.slow
def test_two_ranks_two_workers_no_overlap_no_gap(tiny_data):
    cfg, b, n = _cfg(tiny_data, 0.05), 3, 10
    seen = []
    for rank in range(2):
        ds = MixedStreamDataset(
            cfg, micro_batch_size=b, rank=rank, world_size=2, start_consumed=6, num_batches=n
        )
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        batches = list(loader)
        reference = MixedStream(cfg, rank=rank, world_size=2)
        reference.consumed = 6
        for got in batches:  # the loader's order is exactly the stream's order
            want = reference.next_batch(b)
            assert torch.equal(got.global_indices, want.global_indices)
            assert torch.equal(got.input_ids, want.input_ids)
        seen.append(torch.cat([x.global_indices for x in batches]))
    union = torch.sort(torch.cat(seen)).values
    assert torch.equal(union, torch.arange(6, 6 + 2 * n * b))  # 2 ranks x 10 batches x 3, from position 6
    assert ds.consumed_after(n) == 6 + 2 * n * b


def test_resume_at_a_random_step_is_bit_exact(tiny_data):
    rng = random.Random(1234)
    for world in (1, 2):
        cfg = _cfg(tiny_data, 0.05, d=200 * tiny_data.seq_len)
        straight = [MixedStream(cfg, r, world) for r in range(world)]
        expected = [_take(s, 60, 5) for s in straight]
        stop = rng.randrange(1, 59)
        first = [MixedStream(cfg, r, world) for r in range(world)]
        for s in first:
            _take(s, stop, 5)
        state = json.loads(json.dumps(first[0].state_dict()))  # survives JSON (and torch.save)
        resumed = [MixedStream(cfg, r, world) for r in range(world)]
        for s in resumed:
            s.load_state_dict(copy.deepcopy(state))
        for r, s in enumerate(resumed):
            rest = _take(s, 60 - stop, 5)
            for got, want in zip(rest, expected[r]):
                assert torch.equal(got, want[stop * 5 :])


def test_reshard_continues_the_same_global_stream(tiny_data):
    cfg = _cfg(tiny_data, 0.05)
    two = [MixedStream(cfg, r, 2) for r in range(2)]
    for s in two:
        _take(s, 7, 4)
    state = reshard_state_dict(two[0].state_dict(), 1)
    one = MixedStream(cfg)
    one.load_state_dict(state)
    reference = MixedStream(cfg)
    reference.consumed = 56
    assert torch.equal(one.next_batch(8).input_ids, reference.next_batch(8).input_ids)
    with pytest.raises(UserError, match="world_size 2"):
        MixedStream(cfg).load_state_dict(two[0].state_dict())


@pytest.mark.parametrize(
    "change,field",
    [
        ({"inject_fraction": 0.01}, "inject_fraction"),
        ({"seed": 3}, "seed"),
        ({"target_tokens": 64 * 50}, "target_tokens"),
    ],
)
def test_fingerprint_mismatch_is_refused(tiny_data, change, field):
    saved = MixedStream(_cfg(tiny_data, 0.05))
    saved.next_batch(4)
    other = MixtureConfig(**{**_cfg(tiny_data, 0.05).__dict__, **change})
    with pytest.raises(UserError, match=field) as err:
        MixedStream(other).load_state_dict(saved.state_dict())
    assert "\n" not in str(err.value)


def test_fingerprint_names_changed_shards(tiny_data, tmp_path):
    saved = MixedStream(_cfg(tiny_data, 0.05)).state_dict()
    write_shards(
        read_documents(DATA / "code.jsonl"),
        tiny_data.tokenizer_dir,
        tmp_path / "code2",
        "code",
        ShardConfig(seq_len=tiny_data.seq_len, seed=1),
    )
    cfg = MixtureConfig(target=str(tmp_path / "code2"), pretrain=str(tiny_data.english), inject_fraction=0.05)
    with pytest.raises(UserError, match="target"):
        MixedStream(cfg).load_state_dict(saved)
    edited = dict(saved, consumed=5, fingerprint="0" * 16)
    with pytest.raises(UserError, match="edited"):
        MixedStream(_cfg(tiny_data, 0.05)).load_state_dict(edited)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_inject_fraction(tiny_data, p):
    with pytest.raises(UserError, match=r"inject_fraction .* \[0, 1\)"):
        MixedStream(_cfg(tiny_data, p))


def test_bad_config_values(tiny_data):
    with pytest.raises(UserError, match="needs data.pretrain"):
        MixedStream(MixtureConfig(target=str(tiny_data.code), inject_fraction=0.1))
    with pytest.raises(UserError, match="data.target is empty"):
        MixedStream(MixtureConfig())
    n = len(ShardSet(tiny_data.code))
    with pytest.raises(UserError, match=f"which has {n * tiny_data.seq_len} tokens"):
        MixedStream(_cfg(tiny_data, 0.05, d=10**9))
    with pytest.raises(UserError, match="rank 2"):
        MixedStream(_cfg(tiny_data), rank=2, world_size=2)


def test_seq_len_and_tokenizer_mismatch_between_manifests(tiny_data, tmp_path):
    docs = list(read_documents(DATA / "code.jsonl"))
    write_shards(docs, tiny_data.tokenizer_dir, tmp_path / "code32", "code", ShardConfig(seq_len=32))
    with pytest.raises(UserError, match="seq_len mismatch.*--seq-len"):
        MixedStream(
            MixtureConfig(
                target=str(tmp_path / "code32"), pretrain=str(tiny_data.english), inject_fraction=0.1
            )
        )
    from dist_forget.data.tokenizer import TokenizerConfig, train_tokenizer

    train_tokenizer(docs, tmp_path / "tok300", TokenizerConfig(vocab_size=300, max_chars=None))
    write_shards(
        docs, tmp_path / "tok300", tmp_path / "code300", "code", ShardConfig(seq_len=tiny_data.seq_len)
    )
    with pytest.raises(UserError, match="tokenizer mismatch"):
        MixedStream(
            MixtureConfig(
                target=str(tmp_path / "code300"), pretrain=str(tiny_data.english), inject_fraction=0.1
            )
        )


def test_validation_batches_are_deterministic_and_partitioned(tiny_data):
    a = torch.cat(list(validation_batches(tiny_data.code, 16)))
    b = torch.cat(list(validation_batches(tiny_data.code, 5)))
    assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape[1] == tiny_data.seq_len
    val = ShardSet(tiny_data.code, "val")
    assert torch.equal(a, torch.from_numpy(val.gather(np.arange(len(val))).astype(np.int64)))
    parts = [
        torch.cat(list(validation_batches(tiny_data.code, 4, max_sequences=51, rank=r, world_size=2)))
        for r in range(2)
    ]
    assert len(parts[0]) + len(parts[1]) == 51
    assert torch.equal(parts[0], a[0:51:2]) and torch.equal(parts[1], a[1:51:2])


def test_mixture_config_loads_as_a_yaml_section(tiny_data):
    from dist_forget.config import load_config

    cfg = load_config(
        MixtureConfig,
        None,
        [
            f"target={tiny_data.code}",
            "inject_fraction=0.01",
            f"pretrain={tiny_data.english}",
            "target_tokens=6400",
        ],
    )
    assert cfg.inject_fraction == 0.01 and cfg.target_tokens == 6400
    with pytest.raises(UserError, match=r"inject_fraction = 2.0 must be in \[0, 1\)"):
        load_config(MixtureConfig, None, ["inject_fraction=2.0"])
    with pytest.raises(UserError, match="below 1e-6"):
        MixedStream(_cfg(tiny_data, 1e-9))
