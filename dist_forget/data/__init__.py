"""Data: real-text corpora → a BPE tokenizer → webdataset shards with a manifest → the exact mixed stream.

The public names below are imported on first use (PEP 562), so that a submodule such as
`dist_forget.data.tokenizer` (or the law fitter, which reads none of this) never pulls in torch.

    from dist_forget.data import MixtureConfig, HFMixedStream
    stream = HFMixedStream(MixtureConfig(target="shards/code", pretrain="shards/english", inject_fraction=0.01))
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "MixtureConfig": "mixture",
    "MixedStream": "mixture",
    "MixedStreamDataset": "mixture",
    "Batch": "mixture",
    "validation_batches": "mixture",
    "HFMixedStream": "hf_stream",
    "TokenizerConfig": "tokenizer",
    "train_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "ShardConfig": "shards",
    "write_shards": "shards",
    "read_documents": "documents",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dist_forget.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dist_forget.data.{_WHERE[name]}"), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
