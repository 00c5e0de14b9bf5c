"""Byte-level BPE tokenizer: train with `tokenizers`, save as a Hugging Face fast tokenizer.

The saved directory holds `tokenizer.json` plus a `tokenizer_config.json` naming
`PreTrainedTokenizerFast`, so `transformers.AutoTokenizer.from_pretrained(dir)` loads it offline. The
config is written by hand rather than through transformers so that training does not import it (the
test fixture builds a tokenizer in well under a second). The sha256 of `tokenizer.json` identifies the
tokenizer in every manifest: two shard sets are compatible only if these hashes match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dist_forget.errors import UserError
from dist_forget.io import atomic_dir

EOS = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class TokenizerConfig:
    vocab_size: int = 8192
    min_frequency: int = 2
    max_chars: int | None = 16_000_000  # train on a prefix sample: BPE merges saturate long before 40 MB

    def validate(self) -> None:
        if self.vocab_size < 257:
            raise UserError(
                f"tokenizer vocab_size={self.vocab_size} is below 257 (256 bytes + EOS); use e.g. 8192"
            )
        if self.vocab_size > 65535:
            raise UserError(
                f"tokenizer vocab_size={self.vocab_size}: shards store uint16 ids; use at most 65535"
            )


def _limited(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    used = 0
    for text in texts:
        if max_chars is not None:
            if used >= max_chars:
                return
            text = text[: max_chars - used]
        used += len(text)
        yield text


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, cfg: TokenizerConfig | None = None, overwrite: bool = True
) -> Path:
    """Train a byte-level BPE on `texts` and save it (atomically) as a HF fast tokenizer in `out_dir`."""
    cfg = cfg or TokenizerConfig()
    cfg.validate()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = {"n": 0}

    def counted() -> Iterator[str]:
        for text in _limited(texts, cfg.max_chars):
            seen["n"] += 1
            yield text

    tok.train_from_iterator(counted(), trainer)
    if seen["n"] == 0:
        raise UserError("tokenizer corpus is empty; pass a corpus with at least one non-empty document")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tok.save(str(tmp / TOKENIZER_FILE))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": EOS,
            "bos_token": EOS,
            "unk_token": EOS,
            "pad_token": EOS,
            "model_max_length": 1_000_000,
            "clean_up_tokenization_spaces": False,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({"eos_token": EOS, "bos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2)
            + "\n"
        )
    return out_dir / TOKENIZER_FILE


def tokenizer_path(path: str | Path) -> Path:
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"tokenizer {file} does not exist; run `dist-forget data tokenizer` first")
    return file


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load `tokenizer.json` (or a dir holding it); a corrupt file is a UserError."""
    file = tokenizer_path(path)
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception:  # the Rust error is a long serde message; the fix is always the same
        raise UserError(
            f"tokenizer {file} is not a valid tokenizer.json; rebuild it with `dist-forget data tokenizer`"
        ) from None
    if tok.token_to_id(EOS) is None:
        raise UserError(f"tokenizer {file} has no {EOS} token; rebuild it with `dist-forget data tokenizer`")
    return tok
