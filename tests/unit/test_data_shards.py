"""Shards and manifests on the real sample: contents, split by document, reproducibility, bad input."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from dist_forget.data.documents import read_documents, write_documents
from dist_forget.data.manifest import read_manifest
from dist_forget.data.mixture import MixedStream, MixtureConfig
from dist_forget.data.shards import ShardConfig, ShardSet, write_shards
from dist_forget.data.tokenizer import EOS
from dist_forget.errors import UserError

DATA = Path(__file__).parents[1] / "data"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_manifest_describes_the_shards(tiny_data):
    m = read_manifest(tiny_data.code)
    assert m.seq_len == tiny_data.seq_len and m.dtype == "uint16" and m.vocab_size == tiny_data.vocab_size
    assert m.splits["train"].documents + m.splits["val"].documents == len(
        list(read_documents(DATA / "code.jsonl"))
    )
    assert m.splits["val"].documents >= 1 and len(m.splits["train"].shards) > 1
    for split in m.splits.values():
        assert split.tokens == split.sequences * m.seq_len
        assert sum(s.tokens for s in split.shards) == split.tokens
    assert (Path(tiny_data.code) / "tokenizer.json").is_file()  # copied for downstream HF export


def test_random_access_matches_a_plain_webdataset_read(tiny_data):
    import webdataset as wds

    m = read_manifest(tiny_data.english)
    urls = [str(tiny_data.english / s.file) for s in m.splits["train"].shards]
    plain = np.concatenate(
        [
            x["npy"]
            for x in wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only).decode()
        ]
    )
    shards = ShardSet(tiny_data.english)
    assert np.array_equal(shards.gather(np.arange(len(shards))), plain)
    idx = np.random.default_rng(0).permutation(len(shards))[:100]
    assert np.array_equal(shards.gather(idx), plain[idx])


def test_token_stream_is_documents_with_eos(tiny_data):
    from dist_forget.data.shards import _pick_val

    m = read_manifest(tiny_data.code)
    tok = Tokenizer.from_file(str(tiny_data.tokenizer_dir / "tokenizer.json"))
    train = ShardSet(tiny_data.code)
    pieces = tok.decode(
        train.gather(np.arange(len(train))).reshape(-1).tolist(), skip_special_tokens=False
    ).split(EOS)
    originals = list(read_documents(DATA / "code.jsonl"))
    is_val = _pick_val(len(originals), ShardConfig(val_fraction=m.val_fraction, seed=m.split_seed))
    train_docs = [d for d, v in zip(originals, is_val) if not v]
    assert len(train_docs) == m.splits["train"].documents
    # whole documents, in order, each followed by EOS; only the tail shorter than seq_len is dropped
    assert pieces[:-1] == train_docs[: len(pieces) - 1]
    assert len(pieces) - 1 in (len(train_docs), len(train_docs) - 1)
    assert (train_docs + [""])[len(pieces) - 1].startswith(pieces[-1])


def test_validation_is_held_out_by_document(tiny_data):
    tok = Tokenizer.from_file(str(tiny_data.tokenizer_dir / "tokenizer.json"))

    def text(split: str) -> str:
        s = ShardSet(tiny_data.english, split)
        return tok.decode(s.gather(np.arange(len(s))).reshape(-1).tolist(), skip_special_tokens=False)

    train, val = text("train"), text("val")
    val_docs = [d for d in val.split("<|endoftext|>") if len(d) > 500]
    assert val_docs
    for doc in val_docs:
        assert doc[100:400] not in train


def test_shards_are_reproducible(tiny_data, tmp_path):
    cfg = ShardConfig(
        seq_len=tiny_data.seq_len, val_fraction=0.1, rows_per_member=16, sequences_per_shard=256
    )
    m = write_shards(
        read_documents(DATA / "code.jsonl"),
        tiny_data.tokenizer_dir,
        tmp_path / "again",
        "code",
        cfg,
        source={"domain": "code", "file": "code.jsonl"},
    )
    assert m.fingerprint == read_manifest(tiny_data.code).fingerprint


def test_missing_manifest_and_missing_shard(tiny_data, tmp_path):
    with pytest.raises(UserError, match="manifest.json does not exist"):
        read_manifest(tmp_path)
    d = _copy(tiny_data.code, tmp_path / "code")
    (d / "train-000001.tar").unlink()
    shards = ShardSet(d)
    shards.gather(np.arange(3))  # shard 0 still reads
    with pytest.raises(UserError, match="train-000001.tar is missing"):
        shards.verify()


def test_shard_with_changed_bytes_is_refused(tiny_data, tmp_path):
    d = _copy(tiny_data.code, tmp_path / "code")
    raw = bytearray((d / "train-000000.tar").read_bytes())
    raw[2000] ^= 0xFF
    (d / "train-000000.tar").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="sha256 .* differs from its manifest") as err:
        MixedStream(MixtureConfig(target=str(d))).next_batch(200)
    assert "\n" not in str(err.value)


def _rehash(d: Path, file: str) -> None:
    """Make the manifest agree with an edited tar, so the tar's own checks are what is tested."""
    from dist_forget.data.tokenizer import file_sha256

    m = read_manifest(d)
    for s in m.splits["train"].shards:
        if s.file == file:
            s.sha256 = file_sha256(d / file)
    m.save(d)


def test_corrupt_tar_is_refused(tiny_data, tmp_path):
    d = _copy(tiny_data.code, tmp_path / "code")
    path = d / "train-000000.tar"
    path.write_bytes(path.read_bytes()[:700] + b"\x00garbage" * 100)
    _rehash(d, path.name)
    with pytest.raises(UserError, match="train-000000.tar (is not a readable tar|holds)"):
        ShardSet(d).verify()


@pytest.mark.parametrize("name", ["../evil.npy", "/etc/evil.npy"])
def test_tar_members_with_parent_or_absolute_paths_are_refused(tiny_data, tmp_path, name):
    d = _copy(tiny_data.code, tmp_path / "code")
    path = d / "train-000000.tar"
    payload = io.BytesIO()
    np.save(payload, np.zeros((16, tiny_data.seq_len), np.uint16))
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload.getvalue())
        tar.addfile(info, io.BytesIO(payload.getvalue()))
    _rehash(d, path.name)
    with pytest.raises(UserError, match="'..' or an absolute path"):
        ShardSet(d).verify()


def test_edited_manifest_is_refused(tiny_data, tmp_path):
    d = _copy(tiny_data.code, tmp_path / "code")
    raw = json.loads((d / "manifest.json").read_text())
    raw["splits"]["train"]["shards"][0]["sequences"] += 1
    raw["splits"]["train"]["sequences"] += 1
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match="fingerprint does not match"):
        read_manifest(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(d)


def test_empty_corpus_is_refused_and_nothing_is_written(tiny_data, tmp_path):
    empty = tmp_path / "empty.jsonl"
    write_documents(empty, ["", "   "])
    out = tmp_path / "shards" / "empty"
    with pytest.raises(UserError, match="empty"):
        write_shards(read_documents(empty), tiny_data.tokenizer_dir, out, "empty")
    tiny = tmp_path / "tiny.jsonl"
    write_documents(tiny, ["one short document", "another one"])
    with pytest.raises(UserError, match="fewer than one training sequence"):
        write_shards(read_documents(tiny), tiny_data.tokenizer_dir, out, "tiny")
    assert not out.exists() and list((tmp_path / "shards").iterdir()) == []  # no half-written dir left


def test_bad_corpus_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"oops": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl line 2"):
        list(read_documents(bad))
    with pytest.raises(UserError, match="does not exist"):
        list(read_documents(tmp_path / "nope.jsonl"))
