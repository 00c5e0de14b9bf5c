"""Mixed-stream read speed vs a plain webdataset read of the same shards, and vs what training consumes;
the first epoch over shards served by loopback HTTP vs the same shards on local disk.

    .venv/bin/python -m benchmarks.bench_data [--data work/data] [--target code] [--sequences 60000]

Four numbers, measured in this run (best of 3, alternating, on the same shards):
- plain: a sequential `webdataset.WebDataset(...).decode()` pass over the pretraining train shards
  (the fastest a reader can be, with no mixing, no permutation and no resume);
- mixed: `MixedStream.next_batch` at p = 0.01 with the target domain, i.e. seeded permutations,
  exact source choice and random access into both shard sets;
- training: sequences/s a training step consumes for the smallest ladder model (cpu-0.03m, a real
  HF Llama forward+backward+AdamW at micro-batch 8), the most demanding consumer on this machine;
- first epoch, HTTP vs local: one pass of the exact stream (p = 0, micro-batch 64) over the pretraining
  train split from a fresh process state, timed from opening the stream to the last batch: from a
  loopback `http.server` into an empty `data.cache_dir` (manifest fetch, every shard downloaded, hashed,
  published, memory-mapped), against a fresh copy of the same folder on local disk (every shard hashed
  and memory-mapped). Both folders sit in the page cache, so this is the cost of the HTTP path itself.
Without `--data` shards (run `make data`) it builds the tiny test shards in a temp dir, and for the epoch
a folder of `--epoch-mb` MB of full-size (8 MiB) shards: one real shard of the tiny text, copied under
`n` names (the content does not change the speed of a pass).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def plain_read(urls: list[str], limit: int) -> int:
    import webdataset as wds

    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only).decode():
        n += len(sample["npy"])
        if n >= limit:
            break
    return n


def mixed_read(stream, limit: int, batch: int = 64) -> int:
    n = 0
    while n < limit:
        n += len(stream.next_batch(batch).input_ids)
    return n


def training_rate(seq_len: int, vocab: int, steps: int = 4, micro_batch: int = 8) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    from dist_forget.models.ladder import shape_of

    shape = shape_of("cpu-0.03m")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, intermediate_size=shape.ffn,
                      max_position_embeddings=seq_len, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, vocab, (micro_batch, seq_len))
    for i in range(steps + 1):
        if i == 1:  # the first step pays one-off allocation costs
            start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * micro_batch / (time.perf_counter() - start)


def epoch_shards(tokenizer: Path, out: Path, mb: int) -> Path:
    """A pretraining-like folder of ~`mb` MB in default-size shards: one shard of the tiny English text
    (repeated to fill 8 MiB), written under as many names as needed, with its manifest."""
    from dataclasses import replace

    from dist_forget.data.documents import read_documents
    from dist_forget.data.shards import ShardConfig, write_shards

    docs = list(read_documents(Path(__file__).parents[1] / "tests" / "data" / "english.jsonl"))
    one = write_shards(docs * 40, tokenizer, out / "one", "english", ShardConfig(seq_len=256, val_fraction=0.0))
    first = one.splits["train"].shards[0]
    n = max(1, round(mb * 2**20 / first.bytes))
    folder = out / "english"
    folder.mkdir()
    shards = []
    for k in range(n):
        name = f"train-{k:06d}.tar"
        shutil.copyfile(out / "one" / first.file, folder / name)
        shards.append(replace(first, file=name))
    train = replace(one.splits["train"], shards=shards, sequences=n * first.sequences, tokens=n * first.tokens)
    replace(one, splits={"train": train, "val": one.splits["val"]}).save(folder)
    return folder


def first_epoch(target: str, cache_dir: str, batch: int = 64) -> int:
    """Open the stream over `target` alone and read one epoch of its train split; returns sequences read."""
    from dist_forget.data.mixture import MixedStream, MixtureConfig

    stream = MixedStream(MixtureConfig(target=target, cache_dir=cache_dir))
    return mixed_read(stream, stream.target_sequences, batch)


def http_vs_local(folder: Path, repeats: int) -> tuple[float, float, int]:
    """Best first-epoch sequences/s of `folder` over loopback HTTP and from a fresh local copy, alternating."""
    from dist_forget.net import StaticServer

    http = local = 0.0
    with StaticServer(folder.parent) as server, tempfile.TemporaryDirectory() as scratch:
        for k in range(repeats):
            copy = Path(scratch) / f"local-{k}" / folder.name  # a new path: no hash check remembered
            shutil.copytree(folder, copy)
            url, cache = f"{server.url}/{folder.name}", str(Path(scratch) / f"cache-{k}")
            http = max(http, best_rate(lambda: first_epoch(url, cache), 1))  # noqa: B023 - called at once
            local = max(local, best_rate(lambda: first_epoch(str(copy), cache), 1))  # noqa: B023
            shutil.rmtree(Path(scratch) / f"local-{k}")
            shutil.rmtree(cache)
        n = first_epoch(str(folder), scratch)
    return http, local, n


def best_rate(fn, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t))
    return max(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="work/data", help="OUT dir of `dist-forget data prepare`")
    ap.add_argument("--target", default="code")
    ap.add_argument("--pretrain", default="english")
    ap.add_argument("--sequences", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epoch-mb", type=int, default=64, help="size of the built epoch folder without --data")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from dist_forget.data.manifest import read_manifest
    from dist_forget.data.mixture import MixedStream, MixtureConfig
    from dist_forget.data.shards import ShardSet

    shards = Path(args.data) / "shards"
    tmp = None
    if not (shards / args.target / "manifest.json").is_file():
        import sys

        sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
        from conftest import build_tiny_data

        tmp = tempfile.TemporaryDirectory()
        tiny = build_tiny_data(Path(tmp.name))
        shards, args.target, args.pretrain = tiny.english.parent, "code", "english"
        epoch = epoch_shards(tiny.tokenizer_dir, Path(tmp.name) / "epoch", args.epoch_mb)
        print(f"(no shards under {args.data}; using the tiny test shards, and {epoch} for the epoch)")
    else:
        epoch = shards / args.pretrain
    pre = read_manifest(shards / args.pretrain)
    urls = [str(shards / args.pretrain / s.file) for s in pre.splits["train"].shards]
    limit = min(args.sequences, pre.splits["train"].sequences)
    cfg = MixtureConfig(target=str(shards / args.target), pretrain=str(shards / args.pretrain),
                        inject_fraction=0.01, seed=0)
    ShardSet(pre).verify()  # hash checks are a one-off per process; both readers then read warm pages
    ShardSet(read_manifest(shards / args.target)).verify()

    plain = mixed = 0.0
    for _ in range(args.repeats):  # alternate so that machine noise hits both alike
        plain = max(plain, best_rate(lambda: plain_read(urls, limit), 1))
        mixed = max(mixed, best_rate(lambda: mixed_read(MixedStream(cfg), limit), 1))
    train = training_rate(pre.seq_len, pre.vocab_size)
    http, local, n_epoch = http_vs_local(epoch, args.repeats)
    epoch_bytes = sum(f.stat().st_size for f in epoch.glob("*.tar"))
    tok = pre.seq_len
    print(f"shards: {shards} (target {args.target}, pretrain {args.pretrain}), seq_len {tok}, "
          f"{limit} sequences per pass, best of {args.repeats}")
    print(f"plain webdataset read : {plain:12,.0f} sequences/s  ({plain * tok / 1e6:7.2f} M tokens/s)")
    print(f"mixed stream (p=0.01) : {mixed:12,.0f} sequences/s  ({mixed * tok / 1e6:7.2f} M tokens/s)")
    print(f"training cpu-0.03m    : {train:12,.1f} sequences/s  ({train * tok / 1e3:7.1f} k tokens/s)")
    print(f"mixed / plain         : {mixed / plain:6.2f}x   (target >= 0.5)")
    print(f"mixed / training      : {mixed / train:6.0f}x   (target >= 20)")
    print(f"first epoch of {epoch} ({n_epoch} sequences, {epoch_bytes / 1e6:.1f} MB of tars):")
    for what, rate in (("local disk (fresh copy)    ", local), ("loopback HTTP (empty cache)", http)):
        print(f"  {what}: {rate:12,.0f} sequences/s  ({rate * epoch_bytes / n_epoch / 1e6:7.1f} MB/s of shards)")
    print(f"  http / local               : {http / local:6.2f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
