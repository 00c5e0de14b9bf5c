"""`manifest.json`: what a shard directory holds, and the hashes that prove it.

A manifest records the tokenizer (sha256, vocab size, EOS id), the sequence length and dtype, how many
sequences are packed per tar member, and per split (train / val, held out by document) the shards with
their sequence and token counts and sha256. Its `fingerprint` hashes all of that, so a stream's resume
state can tell whether the data under it changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "dist-forget/shards-v1"
SPLITS = ("train", "val")


@dataclass
class ShardInfo:
    file: str
    sequences: int
    tokens: int
    members: int
    bytes: int
    sha256: str


@dataclass
class SplitInfo:
    documents: int = 0
    sequences: int = 0
    tokens: int = 0
    dropped_tokens: int = 0  # the tail of the split's token stream shorter than one sequence
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass
class Manifest:
    domain: str
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    seq_len: int
    dtype: str
    rows_per_member: int
    val_fraction: float
    split_seed: int
    splits: dict[str, SplitInfo]
    source: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    fingerprint: str = ""
    # where it was read from (not saved): the local folder holding manifest.json (for a URL, its cache
    # folder), the URL as shown in messages (redacted), and for a URL the fetcher of its other files
    directory: Path | None = field(default=None, compare=False)
    origin: str | None = field(default=None, compare=False, repr=False)
    fetch: Callable[[str, str], Path] | None = field(default=None, compare=False, repr=False)

    def compute_fingerprint(self) -> str:
        """sha256 over everything that decides the token content (not provenance or paths)."""
        content = {
            "format": self.format,
            "tokenizer_sha256": self.tokenizer_sha256,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "rows_per_member": self.rows_per_member,
            "splits": {
                name: [(s.file, s.sequences, s.sha256) for s in split.shards]
                for name, split in sorted(self.splits.items())
            },
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise UserError(f"{self.where}: no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    @property
    def where(self) -> str:
        if self.origin:
            return f"{self.origin.rstrip('/')}/{MANIFEST}"
        return str(self.directory / MANIFEST) if self.directory else f"manifest of {self.domain!r}"

    def local_file(self, name: str, sha256: str) -> Path:
        """The local path of file `name` of this shard folder (fetched into the cache first for a URL)."""
        if self.fetch is not None:
            return self.fetch(name, sha256)
        assert self.directory is not None
        return self.directory / name

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, directory=None, origin=None, fetch=None))
        for key in ("directory", "origin", "fetch"):
            data.pop(key)
        return {"format": data.pop("format"), **data}

    def save(self, directory: str | Path) -> Path:
        self.fingerprint = self.compute_fingerprint()
        path = Path(directory) / MANIFEST
        write_json_atomic(path, self.to_json())
        return path


def _bad(path: Path | str, what: str) -> UserError:
    return UserError(f"manifest {path}: {what}; rebuild the shards with `dist-forget data shard`")


def read_manifest(directory: str | Path, origin: str | None = None) -> Manifest:
    """Read and check `DIR/manifest.json` (or the manifest file itself); errors name the field.

    `origin`: the URL the file was fetched from (redacted), named in errors instead of its cached copy."""
    path = Path(directory)
    if path.name != MANIFEST:
        path = path / MANIFEST
    shown = f"{origin.rstrip('/')}/{MANIFEST}" if origin else path
    if not path.is_file():
        raise UserError(
            f"shard manifest {shown} does not exist; build shards with `dist-forget data shard` "
            "(or `dist-forget data prepare`)"
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad(shown, "is not valid JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _bad(
            shown, f"format is {raw.get('format') if isinstance(raw, dict) else None!r}, expected {FORMAT!r}"
        )
    try:
        splits = {
            name: SplitInfo(**{**s, "shards": [ShardInfo(**x) for x in s["shards"]]})
            for name, s in raw["splits"].items()
        }
        manifest = Manifest(**{**raw, "splits": splits}, directory=path.parent, origin=origin)
    except (KeyError, TypeError) as exc:
        raise _bad(shown, f"missing or unexpected field ({exc})") from None
    if manifest.dtype not in ("uint16", "uint32"):
        raise _bad(shown, f"dtype {manifest.dtype!r} is not uint16 or uint32")
    if manifest.seq_len < 1 or manifest.rows_per_member < 1:
        raise _bad(
            shown, f"seq_len={manifest.seq_len}, rows_per_member={manifest.rows_per_member} must be >= 1"
        )
    for name, split in manifest.splits.items():
        for shard in split.shards:
            # a bare file name, and not one of ours in a cache folder (.locks/, .NAME.*.tmp)
            if Path(shard.file).name != shard.file or shard.file.startswith(".") or "\\" in shard.file:
                raise _bad(shown, f"split {name} names shard {shard.file!r} outside the manifest's directory")
        if sum(s.sequences for s in split.shards) != split.sequences:
            raise _bad(shown, f"split {name}: shard sequence counts do not add up to {split.sequences}")
    if manifest.fingerprint != manifest.compute_fingerprint():
        raise _bad(shown, "fingerprint does not match its contents (it was edited)")
    return manifest


def check_compatible(target: Manifest, pretrain: Manifest) -> None:
    """Two shard sets mixed into one stream must share the tokenizer and the sequence length."""
    if target.seq_len != pretrain.seq_len:
        raise UserError(
            f"seq_len mismatch: {target.where} has {target.seq_len}, {pretrain.where} has "
            f"{pretrain.seq_len}; re-shard one of them with --seq-len {target.seq_len}"
        )
    if target.tokenizer_sha256 != pretrain.tokenizer_sha256:
        raise UserError(
            f"tokenizer mismatch: {target.where} (tokenizer {target.tokenizer_sha256[:12]}) and "
            f"{pretrain.where} (tokenizer {pretrain.tokenizer_sha256[:12]}) were tokenized "
            "differently; re-shard both with the same --tokenizer"
        )
    if target.dtype != pretrain.dtype:
        raise UserError(
            f"dtype mismatch: {target.where} is {target.dtype}, {pretrain.where} is {pretrain.dtype}; "
            "re-shard both with the same tokenizer"
        )
