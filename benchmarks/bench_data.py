"""Mixed-stream read speed vs a plain webdataset read of the same shards, and vs what training consumes.

    .venv/bin/python -m benchmarks.bench_data [--data work/data] [--target code] [--sequences 60000]

Three numbers, measured in this run (best of 3, alternating, on the same shards):
- plain: a sequential `webdataset.WebDataset(...).decode()` pass over the pretraining train shards
  (the fastest a reader can be, with no mixing, no permutation and no resume);
- mixed: `MixedStream.next_batch` at p = 0.01 with the target domain, i.e. seeded permutations,
  exact source choice and random access into both shard sets;
- training: sequences/s a training step consumes for the smallest ladder model (cpu-0.03m, a real
  HF Llama forward+backward+AdamW at micro-batch 8), the most demanding consumer on this machine.
Without `--data` shards (run `make data`) it builds the tiny test shards in a temp dir.
"""

from __future__ import annotations

import argparse
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
        print(f"(no shards under {args.data}; using the tiny test shards)")
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
    tok = pre.seq_len
    print(f"shards: {shards} (target {args.target}, pretrain {args.pretrain}), seq_len {tok}, "
          f"{limit} sequences per pass, best of {args.repeats}")
    print(f"plain webdataset read : {plain:12,.0f} sequences/s  ({plain * tok / 1e6:7.2f} M tokens/s)")
    print(f"mixed stream (p=0.01) : {mixed:12,.0f} sequences/s  ({mixed * tok / 1e6:7.2f} M tokens/s)")
    print(f"training cpu-0.03m    : {train:12,.1f} sequences/s  ({train * tok / 1e3:7.1f} k tokens/s)")
    print(f"mixed / plain         : {mixed / plain:6.2f}x   (target >= 0.5)")
    print(f"mixed / training      : {mixed / train:6.0f}x   (target >= 20)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
