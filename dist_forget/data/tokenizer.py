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
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dist_forget.errors import UserError
from dist_forget.io import atomic_dir

EOS = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
SPECIAL_KEYS = ("eos_token", "bos_token", "unk_token", "pad_token")
# what a Hugging Face folder's tokenizer may consist of (fast or slow; a chat template as its own file)
HF_TOKENIZER_FILES = (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_MAP_FILE, "chat_template.jinja", "chat_template.json",
                      "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")  # fmt: skip


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
        _write_json(tmp / CONFIG_FILE, hf_tokenizer_config(tok))
        _write_json(tmp / SPECIAL_MAP_FILE, special_tokens_map(hf_tokenizer_config(tok)))
    return out_dir / TOKENIZER_FILE


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def hf_tokenizer_config(tok: Tokenizer) -> dict[str, Any]:
    """The tokenizer_config.json of a tokenizer.json that comes without one: ours (its one special token
    <|endoftext|> ends, starts, pads and stands for unknown text), else the class alone."""
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if tok.token_to_id(EOS) is not None:
        config.update({key: EOS for key in SPECIAL_KEYS})
    return {**config, "model_max_length": 1_000_000, "clean_up_tokenization_spaces": False}


def _content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def special_tokens_map(config: dict[str, Any]) -> dict[str, str]:
    """special_tokens_map.json from a tokenizer_config.json (transformers 5 no longer writes one)."""
    return {key: _content(config[key]) for key in SPECIAL_KEYS if _content(config.get(key))}


def write_hf_tokenizer(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the Hugging Face tokenizer files of `src` (a folder, or the folder of a tokenizer.json) into
    the folder `dst`, and complete what `AutoTokenizer` needs to know its special tokens: a
    tokenizer_config.json (`hf_tokenizer_config`) and a special_tokens_map.json when `src` has none.
    A base model's own files (its chat template, `<|im_end|>` as end of turn) are copied as they are.
    Returns the names written."""
    folder = tokenizer_path(src).parent
    dst = Path(dst)
    names = [name for name in HF_TOKENIZER_FILES if (folder / name).is_file()]
    for name in names:
        shutil.copyfile(folder / name, dst / name)
    if CONFIG_FILE not in names:
        _write_json(dst / CONFIG_FILE, hf_tokenizer_config(_parse(dst / TOKENIZER_FILE)))
    if SPECIAL_MAP_FILE not in names:
        _write_json(dst / SPECIAL_MAP_FILE, special_tokens_map(json.loads((dst / CONFIG_FILE).read_text())))
    return sorted({*names, CONFIG_FILE, SPECIAL_MAP_FILE})


def special_token_ids(folder: str | Path) -> dict[str, int]:
    """`bos_token_id`, `eos_token_id`, `pad_token_id` of the tokenizer in `folder` (those it names), for the
    model config beside it: `generate` stops at the tokenizer's end token, not at a config default."""
    config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    tok = _parse(tokenizer_path(folder))
    ids = {
        f"{key}_id": tok.token_to_id(_content(config.get(key)) or "")
        for key in ("bos_token", "eos_token", "pad_token")
    }
    return {key: i for key, i in ids.items() if i is not None}


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
    tok = _parse(file)
    if tok.token_to_id(EOS) is None:
        raise UserError(f"tokenizer {file} has no {EOS} token; rebuild it with `dist-forget data tokenizer`")
    return tok


def _parse(file: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(file))
    except Exception:  # the Rust error is a long serde message; the fix is always the same
        raise UserError(
            f"tokenizer {file} is not a valid tokenizer.json; rebuild it with `dist-forget data tokenizer`"
        ) from None
