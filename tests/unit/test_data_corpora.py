"""Corpus extraction helpers, and the real fetch path on one small Debian package."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import pytest

from dist_forget.data import corpora, extract
from dist_forget.data.documents import read_documents
from dist_forget.errors import UserError


def test_chunk_text_keeps_every_paragraph_and_respects_the_cap():
    paras = [f"paragraph {i}" + " word" * (i % 50) for i in range(300)]
    text = "\n\n".join(paras)
    chunks = list(extract.chunk_text(text, max_chars=2000))
    assert len(chunks) > 5 and all(len(c) <= 2000 + 300 for c in chunks)
    assert "\n\n".join(chunks) == text


def test_roff_to_text_and_dedupe():
    roff = ".TH LS 1\n.SH NAME\nls \\- Verzeichnisinhalte auflisten\n.SH BESCHREIBUNG\n.B ls\nzeigt \\fBDateien\\fR an.\n"
    text = extract.roff_to_text(roff)
    assert "NAME" in text and "ls - Verzeichnisinhalte auflisten" in text and "zeigt Dateien an." in text
    docs = list(extract.dedupe_paragraphs(["a\n\nboilerplate", "b\n\nboilerplate", "boilerplate"]))
    assert docs == ["a\n\nboilerplate", "b"]


def test_sources_table_covers_the_issue():
    defaults = [corpora.SOURCES[n] for n in corpora.DEFAULT_DOMAINS]
    assert sum(d.role == "pretrain" for d in defaults) == 1
    assert sum(d.role == "target" for d in defaults) >= 5
    assert all(d.licence and d.packages for d in corpora.SOURCES.values())
    with pytest.raises(UserError, match="unknown domain 'nope'"):
        corpora.domain("nope")


def _apt_ready() -> str | None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "apt-get/dpkg-deb not installed"
    if not glob.glob("/var/lib/apt/lists/*_Packages*"):
        return "apt package lists are missing (run `apt-get update` as root)"
    return None


@pytest.mark.skipif(_apt_ready() is not None, reason=str(_apt_ready()))
def test_fetch_a_real_small_package_is_recorded_and_idempotent(tmp_path, monkeypatch):
    def devil(roots):
        yield from extract.chunk_text(
            corpora._read(roots["dict-devil"] / "usr/share/dictd/devil.dict.dz", "gz")
        )

    spec = corpora.Domain(
        "devil",
        "target",
        "Devil's Dictionary",
        "public domain",
        (corpora.Package("deb", "dict-devil", licence="public domain"),),
        devil,
    )
    monkeypatch.setitem(corpora.SOURCES, "devil", spec)
    logs: list[str] = []
    first = corpora.build_domain("devil", tmp_path, log=logs.append)
    pkg = first["packages"][0]
    assert pkg["name"] == "dict-devil" and pkg["version"] and len(pkg["sha256"]) == 64
    docs = list(read_documents(tmp_path / "corpora" / "devil"))
    assert len(docs) == first["documents"] > 10 and any("Bierce" in d or "ABSURDITY" in d for d in docs)
    again = corpora.build_domain("devil", tmp_path, log=logs.append)
    assert again == first and "cached" in logs[-1]
    assert json.loads((tmp_path / "corpora" / "devil" / "source.json").read_text()) == first


@pytest.mark.skipif(_apt_ready() is not None, reason=str(_apt_ready()))
def test_missing_package_names_the_package(tmp_path, monkeypatch):
    spec = corpora.Domain(
        "ghost",
        "target",
        "",
        "none",
        (corpora.Package("deb", "no-such-package-dist-forget"),),
        lambda roots: iter(()),
    )
    monkeypatch.setitem(corpora.SOURCES, "ghost", spec)
    with pytest.raises(UserError, match="no-such-package-dist-forget"):
        corpora.build_domain("ghost", tmp_path, log=lambda s: None)
    assert not Path(tmp_path / "corpora" / "ghost" / "source.json").exists()


def test_dictd_entries_reads_each_entry_once_without_the_header():
    entries = [
        "00-database-short\n   A Dictionary",
        "Aback \\A*back\\, adv.\n   Backward.",
        'Abbey \\Ab"bey\\, n.\n   A monast\u00e8re.',
    ]
    data = "\n\n".join(entries).encode()
    spans, at = [], 0
    for entry in entries:
        spans.append((at, len(entry.encode())))
        at += len(entry.encode()) + 2

    def b64(n: int) -> str:
        digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        return digits[n] if n < 64 else b64(n // 64) + digits[n % 64]

    index = [
        ("00-database-short", *spans[0]),
        ("abbey", *spans[2]),
        ("aback", *spans[1]),
        ("abbatial", *spans[2]),
    ]
    text = "\n".join(f"{head}\t{b64(start)}\t{b64(size)}" for head, start, size in index)
    assert extract.dictd_number("Kj") == 10 * 64 + 35
    assert list(extract.dictd_entries(text, data)) == entries[1:]  # file order, the shared entry once


def test_a_mix_that_extends_english_keeps_its_tokenizer(tmp_path, monkeypatch):
    """english-xl is tokenized with the tokenizer trained on english: preparing it after the default domains
    neither retrains the tokenizer nor changes english's shards (every figure made before stays valid)."""
    from dist_forget.data.commands import prepare
    from dist_forget.data.manifest import read_manifest

    data = Path(__file__).parents[1] / "data"

    def lines(name: str):
        return lambda roots: (json.loads(line)["text"] for line in (data / name).read_text().splitlines())

    def more_english(roots):
        yield from lines("english.jsonl")(roots)
        yield from lines("code.jsonl")(roots)  # stands in for the dictionary

    sources = {
        "english": corpora.Domain("english", "pretrain", "e", "PD", (), lines("english.jsonl")),
        "code": corpora.Domain("code", "target", "c", "PSF", (), lines("code.jsonl")),
        "english-xl": corpora.Domain(
            "english-xl", "pretrain", "x", "PD", (), more_english, tokenizer_from="english"
        ),
    }
    monkeypatch.setattr(corpora, "SOURCES", sources)
    monkeypatch.setattr(corpora, "DEFAULT_DOMAINS", ("english", "code"))
    out = tmp_path / "data"
    assert prepare(out, vocab_size=300, seq_len=32) == 0
    tokenizer = (out / "tokenizer" / "tokenizer.json").read_bytes()
    english = read_manifest(out / "shards" / "english")
    assert prepare(out, ["english-xl"], vocab_size=300, seq_len=32) == 0
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == tokenizer
    assert read_manifest(out / "shards" / "english") == english
    xl = read_manifest(out / "shards" / "english-xl")
    assert xl.tokenizer_sha256 == english.tokenizer_sha256
    assert xl.splits["train"].tokens > english.splits["train"].tokens
