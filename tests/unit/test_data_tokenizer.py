"""The BPE tokenizer: round trip through `tokenizers` and through transformers' AutoTokenizer, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_forget.data.documents import read_documents
from dist_forget.data.tokenizer import EOS, TokenizerConfig, file_sha256, load_tokenizer, train_tokenizer
from dist_forget.errors import UserError

DATA = Path(__file__).parents[1] / "data"
SAMPLES = [
    "def heappush(heap, item):\n    heap.append(item)\n",
    "ABSURDITY, n.  A statement or belief manifestly inconsistent with one's own opinion.",
    "möglicherweise mit bzip2 komprimierte Dateien — ünïcödé, 日本語, emoji 🙂, tabs\tand  spaces",
]


def test_round_trip(tiny_data):
    tok = load_tokenizer(tiny_data.tokenizer_dir)
    assert tok.get_vocab_size() == tiny_data.vocab_size == 512
    for text in SAMPLES + list(read_documents(DATA / "code.jsonl"))[:2]:
        assert tok.decode(tok.encode(text).ids) == text


def test_autotokenizer_loads_it_offline(tiny_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_data.tokenizer_dir))
    raw = load_tokenizer(tiny_data.tokenizer_dir)
    assert hf.eos_token == EOS and hf.eos_token_id == raw.token_to_id(EOS)
    for text in SAMPLES:
        ids = hf(text)["input_ids"]
        assert ids == raw.encode(text).ids
        assert hf.decode(ids) == text


def test_training_is_deterministic(tmp_path):
    docs = list(read_documents(DATA / "english.jsonl"))[:20]
    a = train_tokenizer(docs, tmp_path / "a", TokenizerConfig(vocab_size=300, max_chars=None))
    b = train_tokenizer(docs, tmp_path / "b", TokenizerConfig(vocab_size=300, max_chars=None))
    assert file_sha256(a) == file_sha256(b)


def test_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(UserError, match="vocab_size=100"):
        train_tokenizer(["text"], tmp_path / "t", TokenizerConfig(vocab_size=100))
    with pytest.raises(UserError, match="corpus is empty"):
        train_tokenizer([], tmp_path / "t", TokenizerConfig(vocab_size=300))
    assert not (tmp_path / "t").exists()
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad")
