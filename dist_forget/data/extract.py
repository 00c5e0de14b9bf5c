"""Text out of the package formats the corpora come in: SWORD modules, R lazy-load data, dictd dictionaries,
roff man pages, HTML, and a splitter that cuts long texts into document-sized chunks.

Pure functions over files; no downloads here (see corpora.py).
"""

from __future__ import annotations

import glob
import gzip
import html
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any


def chunk_text(text: str, max_chars: int = 16_000) -> Iterator[str]:
    """Cut `text` into pieces of at most ~max_chars at paragraph (else line) boundaries.

    Long books become several documents, so the train/val split (by document) can hold out part of
    them and one novel does not land entirely in validation.
    """
    parts = re.split(r"\n\s*\n", text)
    if len(parts) == 1:
        parts = text.split("\n")
    sep = "\n\n" if "\n\n" in text else "\n"
    buf: list[str] = []
    size = 0
    for part in parts:
        part = part.strip("\n")
        if not part.strip():
            continue
        if size and size + len(part) > max_chars:
            yield sep.join(buf)
            buf, size = [], 0
        buf.append(part)
        size += len(part) + len(sep)
    if buf:
        yield sep.join(buf)


def chunk_lines(lines: Iterable[str], max_chars: int = 8_000) -> Iterator[str]:
    """Group short records (verses, definitions, fortunes) into documents of about max_chars."""
    buf: list[str] = []
    size = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        buf.append(line)
        size += len(line) + 1
        if size >= max_chars:
            yield "\n".join(buf)
            buf, size = [], 0
    if buf:
        yield "\n".join(buf)


# ----------------------------------------------------------------------------------------- dictd

_DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(text: str) -> int:
    """An offset or length of a dictd .index line: a big-endian number in base-64 digits."""
    value = 0
    for digit in text:
        value = value * 64 + _DICTD_DIGITS.index(digit)
    return value


def dictd_entries(index: str, data: bytes) -> Iterator[str]:
    """Every entry of a dictd dictionary once, in file order, from its .index and uncompressed .dict.

    The index lists one line per headword (`headword TAB offset TAB length`) and several headwords share an
    entry, hence the set. The 00-database-* entries are the dictionary's own name, URL and licence.
    """
    spans = set()
    for line in index.splitlines():
        head, offset, length = line.split("\t")[:3]
        if not head.startswith("00-database"):
            spans.add((dictd_number(offset), dictd_number(length)))
    for start, size in sorted(spans):
        yield data[start : start + size].decode("utf-8", "replace").strip()


# ----------------------------------------------------------------------------------------- SWORD


def sword_entries(module_dir: str) -> Iterator[str]:
    """Raw entries of a SWORD zText/zCom module (zlib blocks plus a verse index; 10- or 12-byte index)."""
    for vidx in sorted(
        glob.glob(os.path.join(module_dir, "*.bzv")) + glob.glob(os.path.join(module_dir, "*.czv"))
    ):
        four = vidx.endswith(".czv")  # zText4/zCom4 store 4-byte entry sizes
        base = vidx[:-1]
        with open(base + "s", "rb") as fh:
            ib = fh.read()
        with open(base + "z", "rb") as fh:
            db = fh.read()
        with open(vidx, "rb") as fh:
            vb = fh.read()
        blocks = [struct.unpack("<III", ib[i : i + 12]) for i in range(0, len(ib) - 11, 12)]
        cache: dict[int, bytes] = {}
        step = 12 if four else 10
        for i in range(0, len(vb) - step + 1, step):
            if four:
                b, off, size = struct.unpack("<III", vb[i : i + 12])
            else:
                b, off, size = struct.unpack("<IIH", vb[i : i + 10])
            if size == 0 or b >= len(blocks):
                continue
            if b not in cache:
                o, s, _ = blocks[b]
                cache = {b: zlib.decompress(db[o : o + s])}
            yield cache[b][off : off + size].decode("utf-8", "replace")


def _clean_osis(text: str) -> str:
    text = re.sub(r"<note\b.*?</note>", "", text, flags=re.S)
    text = re.sub(r"<(lb|br|p|div)\b[^>]*/?>", "\n", text)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\s*\n\s*", "\n", text).strip()


def sword_text(module_dir: str) -> Iterator[str]:
    """Clean verses/comments; commentaries link one entry to many verses, so consecutive repeats go."""
    prev = None
    for entry in sword_entries(module_dir):
        clean = _clean_osis(entry)
        if clean and clean != prev:
            yield clean
        prev = clean


# ----------------------------------------------------------------------------------- R data / HTML


def read_rdb(prefix: str) -> dict[str, Any]:
    """Objects of an R lazy-load database (`data/Rdata.rdb` + `.rdx`) without R, via PyPI `rdata`."""
    import warnings

    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open(prefix + ".rdx", "rb") as fh:
            index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(fh.read())))
        with open(prefix + ".rdb", "rb") as fh:
            rdb = fh.read()
        out = {}
        for name, (off, length) in index["variables"].items():
            chunk = rdb[int(off) : int(off) + int(length)]
            out[name] = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:])))
    return out


def html_to_text(source: str) -> str:
    source = re.sub(r"(?is)<(script|style).*?</\1>", "", source)
    source = re.sub(r"(?i)<br\s*/?>|</p>|</h\d>|</li>|</div>", "\n", source)
    source = html.unescape(re.sub(r"<[^>]+>", "", source))
    source = re.sub(r"[ \t]+", " ", source)
    return re.sub(r"\n\s*\n+", "\n\n", source).strip()


# ----------------------------------------------------------------------------------------- roff

_ROFF_ESCAPES = [
    (re.compile(a), b)
    for a, b in [
        (r"\\f[BIRP]|\\f\(..|\\f\[[^\]]*\]", ""),
        (r"\\\(em|\\\[em\]", "—"),
        (r"\\\(en", "–"),
        (r"\\-", "-"),
        (r"\\\(aq", "'"),
        (r"\\\(dq", '"'),
        (r"\\\(lq|\\\(rq", '"'),
        (r"\\\(bu", "•"),
        (r"\\&", ""),
        (r"\\e", "\\\\"),
        (r"\\ ", " "),
        (r"\\\(co", "©"),
        (r"\\\*\(..|\\\*.", ""),
        (r"\\s[-+]?\d", ""),
        (r"\\[|^%c]", ""),
        (r"\\\(..", ""),
        (r"\\\[[^\]]*\]", ""),
    ]
]
_ROFF_MACRO = re.compile(r"[.'](SH|SS|B|I|BR|IR|RB|BI|IB|RI|TP|PP|P|LP|IP|nf|fi|br|sp|TH)\b\s*(.*)")


def roff_to_text(source: str) -> str:
    """A rough man(7) → plain text: keeps headings and running text, drops other requests."""
    out: list[str] = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"", ".\\}")) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            m = _ROFF_MACRO.match(line)
            if not m:
                continue
            mac, arg = m.groups()
            if mac == "SH":
                out.append("\n" + arg.strip('"').upper())
            elif mac == "SS":
                out.append("\n" + arg.strip('"'))
            elif mac in ("B", "I", "BR", "IR", "RB", "BI", "IB", "RI"):
                parts = re.findall(r'"[^"]*"|\S+', arg)
                out.append(("" if len(mac) == 2 else " ").join(p.strip('"') for p in parts))
            elif mac in ("PP", "P", "LP", "sp", "TP"):
                out.append("")
            elif mac == "IP" and arg:
                out.append(arg.split('"')[1] if '"' in arg else arg.split()[0])
            continue
        out.append(line)
    text = "\n".join(out)
    for pattern, repl in _ROFF_ESCAPES:
        text = pattern.sub(repl, text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def dedupe_paragraphs(documents: Iterable[str]) -> Iterator[str]:
    """Drop paragraphs already seen in an earlier document (translated man pages repeat a boilerplate)."""
    seen: set[int] = set()
    for doc in documents:
        keep = []
        for para in re.split(r"\n\s*\n", doc):
            key = hash(para.strip())
            if para.strip() and key not in seen:
                seen.add(key)
                keep.append(para.strip("\n"))
        if keep:
            yield "\n\n".join(keep)
