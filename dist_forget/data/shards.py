"""Documents → token stream → fixed-length sequences → webdataset tar shards (+ manifest), and back.

Writing: each document is tokenized and followed by EOS; the split's token stream is cut into `seq_len`
sequences and `rows_per_member` of them are packed into one `.npy` tar member (one sequence per member is
~25x slower to read: webdataset's cost is per tar member). Documents, not sequences, are assigned to train
or val, so no validation text leaks into training. Tars are written with webdataset's `TarWriter` at a
fixed mtime, so the same input gives byte-identical shards and hashes.

Reading (`ShardSet`): random access by sequence index. Tar members are stored uncompressed at 512-byte
offsets and `.npy` headers are padded to 64 bytes, so each row is a fixed-offset slice of the tar file;
a shard is memory-mapped once, after its sha256 is checked and its member names are vetted (no `..`, no
absolute paths), and a batch is then one fancy-index gather. This is what makes the exact stream's
permuted, resumable access as fast as a sequential read. A shard folder at a URL (data/remote.py) is read
the same way: each shard is fetched into the local cache on first use, then memory-mapped.
"""

from __future__ import annotations

import shutil
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dist_forget.data.manifest import Manifest, ShardInfo, SplitInfo
from dist_forget.data.remote import open_manifest
from dist_forget.data.tokenizer import EOS, file_sha256, load_tokenizer, tokenizer_path
from dist_forget.errors import UserError
from dist_forget.io import atomic_dir


@dataclass
class ShardConfig:
    seq_len: int = 256
    val_fraction: float = 0.05  # fraction of documents held out for validation
    seed: int = 0  # picks the validation documents
    rows_per_member: int = 0  # 0 = auto: about 32 KiB per tar member
    sequences_per_shard: int = 0  # 0 = auto: about 8 MiB per shard
    max_chars: int | None = (
        None  # cap big corpora: keep an even spread of documents up to ~this many characters
    )

    def validate(self) -> None:
        if self.seq_len < 2:
            raise UserError(f"seq_len={self.seq_len} must be at least 2; use e.g. 256")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction={self.val_fraction} must be in [0, 1); use e.g. 0.05")

    def resolved(self, itemsize: int) -> tuple[int, int]:
        rows = self.rows_per_member or max(1, (32 * 1024) // (self.seq_len * itemsize))
        per_shard = self.sequences_per_shard or max(rows, (8 * 1024 * 1024) // (self.seq_len * itemsize))
        per_shard = max(rows, per_shard // rows * rows)  # whole members per shard
        return rows, per_shard


Progress = Callable[[dict[str, Any]], None]


def _pick_val(n_docs: int, cfg: ShardConfig) -> np.ndarray:
    """Boolean mask of validation documents: a seeded choice of round(n * val_fraction), at least 1."""
    mask = np.zeros(n_docs, dtype=bool)
    if cfg.val_fraction == 0.0:
        return mask
    if n_docs < 2:
        raise UserError(
            f"corpus has {n_docs} document(s); holding out validation by document needs >= 2 "
            "(or pass --val-fraction 0)"
        )
    n_val = min(n_docs - 1, max(1, round(n_docs * cfg.val_fraction)))
    mask[np.random.default_rng([cfg.seed, 0x5A11]).permutation(n_docs)[:n_val]] = True
    return mask


class _SplitWriter:
    """Accumulates a split's token stream and writes full members into size-capped shards."""

    def __init__(self, tmp: Path, name: str, seq_len: int, dtype: np.dtype, rows: int, per_shard: int):
        self.tmp, self.name, self.seq_len, self.dtype = tmp, name, seq_len, dtype
        self.rows, self.per_shard = rows, per_shard
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.info = SplitInfo()
        self.writer: Any = None
        self.shard_rows = 0
        self.shard_members = 0

    def add(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += len(ids)
        chunk = self.rows * self.seq_len
        if self.buffered >= chunk:
            stream = np.concatenate(self.buffer)
            n_full = len(stream) // chunk
            for m in range(n_full):
                self._member(stream[m * chunk : (m + 1) * chunk].reshape(self.rows, self.seq_len))
            rest = stream[n_full * chunk :]
            self.buffer, self.buffered = [rest], len(rest)

    def _member(self, rows: np.ndarray) -> None:
        import webdataset as wds  # imported here: it pulls in torch, which readers of shards never need

        if self.writer is None:
            path = self.tmp / f"{self.name}-{len(self.info.shards):06d}.tar"
            self.writer = wds.TarWriter(str(path), mtime=0.0, user="", group="", mode=0o444)
            self.path = path
        self.writer.write({"__key__": f"{self.shard_members:06d}", "npy": np.ascontiguousarray(rows)})
        self.shard_rows += len(rows)
        self.shard_members += 1
        if self.shard_rows >= self.per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.info.shards.append(
            ShardInfo(
                file=self.path.name,
                sequences=self.shard_rows,
                tokens=self.shard_rows * self.seq_len,
                members=self.shard_members,
                bytes=self.path.stat().st_size,
                sha256=file_sha256(self.path),
            )
        )
        self.info.sequences += self.shard_rows
        self.info.tokens += self.shard_rows * self.seq_len
        self.writer, self.shard_rows, self.shard_members = None, 0, 0

    def finish(self) -> SplitInfo:
        stream = np.concatenate(self.buffer) if self.buffer else np.zeros(0, self.dtype)
        n_seq = len(stream) // self.seq_len
        if n_seq:  # the last member holds fewer rows; readers take row counts from the .npy header
            self._member(stream[: n_seq * self.seq_len].reshape(n_seq, self.seq_len))
        self.info.dropped_tokens = len(stream) - n_seq * self.seq_len
        self._close_shard()
        return self.info


def write_shards(
    documents: Iterable[str],
    tokenizer: str | Path,
    out_dir: str | Path,
    domain: str,
    cfg: ShardConfig | None = None,
    source: dict[str, Any] | None = None,
    progress: Progress | None = None,
    overwrite: bool = True,
) -> Manifest:
    """Tokenize `documents` and write train/val shards plus `manifest.json` into `out_dir` (atomically)."""
    cfg = cfg or ShardConfig()
    cfg.validate()
    tok_file = tokenizer_path(tokenizer)
    tok = load_tokenizer(tok_file)
    vocab = tok.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab <= 65536 else np.uint32)
    eos = tok.token_to_id(EOS)
    rows, per_shard = cfg.resolved(dtype.itemsize)
    docs = list(documents)
    chars = sum(len(d) for d in docs)
    if cfg.max_chars is not None and chars > cfg.max_chars:
        # an even spread of documents (the same floor rule as the injected stream), not a prefix, so a
        # capped corpus still covers all of its sources (e.g. every ICD-10 chapter)
        keep = cfg.max_chars / chars
        docs = [d for i, d in enumerate(docs) if int((i + 1) * keep) > int(i * keep)]
        chars = sum(len(d) for d in docs)
    if not docs:
        raise UserError(
            f"corpus for domain {domain!r} is empty (no non-empty documents); check the corpus file"
        )
    is_val = _pick_val(len(docs), cfg)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        writers = {
            name: _SplitWriter(tmp, name, cfg.seq_len, dtype, rows, per_shard) for name in ("train", "val")
        }
        batch = 256
        n_tokens = chars_done = 0
        for start in range(0, len(docs), batch):
            chunk = docs[start : start + batch]
            for k, enc in enumerate(tok.encode_batch(chunk, add_special_tokens=False)):
                ids = np.asarray(enc.ids + [eos], dtype=dtype)
                n_tokens += len(ids)
                split = "val" if is_val[start + k] else "train"
                writers[split].add(ids)
                writers[split].info.documents += 1
            chars_done += sum(len(d) for d in chunk)
            if progress:
                elapsed = time.perf_counter() - started
                progress(
                    {
                        "domain": domain,
                        "documents": min(start + batch, len(docs)),
                        "of": len(docs),
                        "tokens": n_tokens,
                        "tokens_per_s": n_tokens / max(elapsed, 1e-9),
                        "eta_s": elapsed / chars_done * (chars - chars_done),
                    }
                )
        splits = {name: w.finish() for name, w in writers.items()}
        if splits["train"].sequences == 0:
            raise UserError(
                f"corpus for domain {domain!r} has {n_tokens} tokens, fewer than one training "
                f"sequence of seq_len={cfg.seq_len}; use a bigger corpus or a smaller --seq-len"
            )
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            src = tok_file.parent / name
            if src.is_file():  # downstream tools (HF export) look for the tokenizer beside the data
                shutil.copyfile(src, tmp / name)
        manifest = Manifest(
            domain=domain,
            tokenizer_sha256=file_sha256(tok_file),
            vocab_size=vocab,
            eos_id=eos,
            seq_len=cfg.seq_len,
            dtype=dtype.name,
            rows_per_member=rows,
            val_fraction=cfg.val_fraction,
            split_seed=cfg.seed,
            splits=splits,
            source=dict(source or {}),
        )
        manifest.save(tmp)
    manifest.directory = out_dir
    return manifest


# ---------------------------------------------------------------------------------------------- reading

_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 already checked


def _safe_member(name: str) -> bool:
    return not (name.startswith("/") or name.startswith("\\") or ".." in Path(name).parts or ":" in name)


class _OpenShard:
    """One memory-mapped shard: `starts[r]` is the element offset of row r in the file."""

    def __init__(self, path: Path, info: ShardInfo, seq_len: int, dtype: np.dtype, cached: bool = False):
        if not path.is_file():
            raise UserError(f"shard {path} is missing; re-run `dist-forget data shard` for this domain")
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if _VERIFIED.get(key) != info.sha256:
            digest = file_sha256(path)
            if digest != info.sha256:
                fix = (  # a cached copy of a shard at a URL was checked when fetched: this disk changed it
                    f"delete {path} and it is fetched again"
                    if cached
                    else "re-run `dist-forget data shard` for this domain"
                )
                raise UserError(
                    f"shard {path} sha256 {digest[:12]}... differs from its manifest "
                    f"({info.sha256[:12]}...): the file is corrupt or was replaced; {fix}"
                )
            _VERIFIED[key] = digest
        starts: list[np.ndarray] = []
        try:
            with tarfile.open(path, "r:") as tar, open(path, "rb") as raw:
                for member in tar:
                    if not _safe_member(member.name):
                        raise UserError(
                            f"shard {path} has member {member.name!r} with '..' or an absolute path; "
                            "refusing to read it"
                        )
                    if not member.isfile() or not member.name.endswith(".npy"):
                        continue
                    raw.seek(member.offset_data)
                    version = np.lib.format.read_magic(raw)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, file_dtype = read_header(raw)
                    header = raw.tell() - member.offset_data
                    if fortran or len(shape) != 2 or shape[1] != seq_len or file_dtype != dtype:
                        raise UserError(
                            f"shard {path} member {member.name!r} holds {file_dtype}{list(shape)}, "
                            f"not {dtype.name}[k, {seq_len}]; re-run `dist-forget data shard`"
                        )
                    first = (member.offset_data + header) // dtype.itemsize
                    starts.append(first + np.arange(shape[0], dtype=np.int64) * seq_len)
        except (tarfile.TarError, ValueError, OSError, EOFError) as exc:
            raise UserError(
                f"shard {path} is not a readable tar of .npy members ({exc}); re-run `dist-forget data shard`"
            ) from None
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        if len(self.starts) != info.sequences:
            raise UserError(
                f"shard {path} holds {len(self.starts)} sequences, its manifest says {info.sequences}; "
                "re-run `dist-forget data shard`"
            )
        # a plain ndarray over the mapping: np.memmap's own __getitem__ costs more than the gather itself
        self.data = np.memmap(path, dtype=dtype, mode="r").view(np.ndarray)
        self.offsets = np.arange(seq_len, dtype=np.int64)

    def rows(self, local: np.ndarray) -> np.ndarray:
        return self.data[self.starts[local][:, None] + self.offsets[None, :]]


class ShardSet:
    """Random access to one split of a shard folder: `gather(indices)` → [n, seq_len] token ids.

    The folder is a path or a URL (`data/remote.py`): a shard at a URL is fetched into the cache the first
    time a gather touches it, then memory-mapped like a local one."""

    def __init__(
        self, manifest: Manifest | str | Path, split: str = "train", cache_dir: str | Path | None = None
    ):
        self.manifest = manifest if isinstance(manifest, Manifest) else open_manifest(manifest, cache_dir)
        self.info = self.manifest.split(split)
        self.split = split
        self.seq_len = self.manifest.seq_len
        self.dtype = np.dtype(self.manifest.dtype)
        self.num_sequences = self.info.sequences
        self.bounds = np.cumsum([0] + [s.sequences for s in self.info.shards])
        self._open: dict[int, _OpenShard] = {}

    def __len__(self) -> int:
        return self.num_sequences

    def shard(self, k: int) -> _OpenShard:
        if k not in self._open:
            info = self.info.shards[k]
            path = self.manifest.local_file(info.file, info.sha256)
            cached = self.manifest.fetch is not None
            self._open[k] = _OpenShard(path, info, self.seq_len, self.dtype, cached)
        return self._open[k]

    def verify(self) -> None:
        """Open (hash and index) every shard now instead of at first use (at a URL: fetch them all)."""
        for k in range(len(self.info.shards)):
            self.shard(k)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.seq_len), dtype=self.dtype)
        if len(indices) == 0:
            return out
        if indices.min() < 0 or indices.max() >= self.num_sequences:
            raise IndexError(f"sequence index out of range [0, {self.num_sequences})")
        which = np.searchsorted(self.bounds, indices, side="right") - 1
        if which[0] == which[-1] and (which == which[0]).all():
            k = int(which[0])
            return self.shard(k).rows(indices - self.bounds[k])
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.shard(int(k)).rows(indices[sel] - self.bounds[k])
        return out

    def iter_sequential(self, batch: int) -> Iterator[np.ndarray]:
        for start in range(0, self.num_sequences, batch):
            yield self.gather(np.arange(start, min(start + batch, self.num_sequences)))
