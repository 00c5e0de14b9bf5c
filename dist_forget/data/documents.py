"""The corpus format: documents in, documents out.

A corpus is a `documents.jsonl` (one `{"text": ...}` object per line) inside a domain directory, next to
its `source.json` provenance. Documents are the unit the train/validation split holds out, so they should
be natural units (a source file, a licence, a man page, a chapter). Plain `.txt` files are accepted too:
blank-line-separated blocks are then the documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from dist_forget.errors import UserError
from dist_forget.io import atomic_path

DOCUMENTS = "documents.jsonl"


def corpus_file(path: str | Path) -> Path:
    """The documents file behind `path` (a domain dir, a .jsonl or a .txt), or a UserError."""
    path = Path(path)
    if path.is_dir():
        path = path / DOCUMENTS
    if not path.is_file():
        raise UserError(
            f"corpus {path} does not exist; run `dist-forget data fetch` or pass a .jsonl/.txt file"
        )
    if path.suffix not in (".jsonl", ".txt"):
        raise UserError(f"corpus {path}: unknown format {path.suffix!r}; use documents.jsonl or a .txt file")
    return path


def read_documents(path: str | Path) -> Iterator[str]:
    """Yield the non-empty documents of a corpus, in file order."""
    path = corpus_file(path)
    if path.suffix == ".txt":
        block: list[str] = []
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    block.append(line)
                elif block:
                    yield "".join(block).strip("\n")
                    block = []
        if block:
            yield "".join(block).strip("\n")
        return
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(
                    f"corpus {path} line {lineno} is not a JSON object with a 'text' field; "
                    "rebuild it with `dist-forget data fetch`"
                ) from None
            if isinstance(text, str) and text.strip():
                yield text


def write_documents(path: str | Path, documents: Iterable[str]) -> tuple[int, int]:
    """Write documents atomically as JSONL; returns (documents, UTF-8 bytes of text)."""
    n_docs = n_bytes = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for text in documents:
            if not text.strip():
                continue
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            n_docs += 1
            n_bytes += len(text.encode("utf-8"))
    return n_docs, n_bytes
