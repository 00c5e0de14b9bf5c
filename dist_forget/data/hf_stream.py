"""The exact mixed stream as Hugging Face-style examples: `{"input_ids", "labels"}` tensors.

For a plain torch loop or a `transformers.Trainer` that should see exactly the sequences a dist-forget run
sees: after any k sequences exactly ⌊k·p⌋ are pretraining (mixture.py). A causal LM's labels are its
input ids (HF shifts them inside the model), so `labels` is a copy of `input_ids`.

- `batch_size=None`: one sequence per item (`input_ids` of shape [seq_len]), in stream order, for
  `Trainer` (its collator stacks `per_device_train_batch_size` of them; keep `dataloader_num_workers=0`
  so the order is the stream's);
- `batch_size=B`: whole micro-batches ([B, seq_len]), for `DataLoader(ds, batch_size=None)` in a plain
  loop; DataLoader workers then split the batches with no overlap or gap (MixedStreamDataset).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dist_forget.data.mixture import MixedStream, MixedStreamDataset, MixtureConfig
from dist_forget.errors import UserError


class HFMixedStream(torch.utils.data.IterableDataset):
    """This rank's exact mixed stream as `{"input_ids": LongTensor, "labels": LongTensor}` items.

    Args of the stream are those of MixedStream (a MixtureConfig, rank, world_size); `start_consumed`
    is a saved position (MixedStream.state_dict()["consumed"]), `num_sequences` ends the stream after
    that many of this rank's sequences (None: endless, epochs over the target set as a run has them).
    """

    def __init__(
        self,
        cfg: MixtureConfig,
        batch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        start_consumed: int = 0,
        num_sequences: int | None = None,
    ):
        super().__init__()
        if batch_size is not None and batch_size < 1:
            raise UserError(f"HFMixedStream: batch_size = {batch_size} must be >= 1 (or None: one sequence)")
        if num_sequences is not None and batch_size and num_sequences % batch_size:
            raise UserError(
                f"HFMixedStream: num_sequences = {num_sequences} is not a multiple of batch_size = {batch_size}"
            )
        self.cfg, self.batch_size = cfg, batch_size
        self.rank, self.world_size = rank, world_size
        self.start_consumed, self.num_sequences = start_consumed, num_sequences
        # fail fast in the caller's process on a bad config or missing shards (and learn seq_len, vocab)
        stream = MixedStream(cfg, rank, world_size)
        self.seq_len, self.vocab_size = stream.seq_len, stream.vocab_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batch_size is not None:
            batches = None if self.num_sequences is None else self.num_sequences // self.batch_size
            data = MixedStreamDataset(
                self.cfg, self.batch_size, self.rank, self.world_size, self.start_consumed, batches
            )
            for batch in data:
                yield {"input_ids": batch.input_ids, "labels": batch.input_ids.clone()}
            return
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise UserError(
                "HFMixedStream(batch_size=None) yields one sequence at a time in stream order: read it with "
                "num_workers=0 (dataloader_num_workers=0), or give batch_size for worker-split batches"
            )
        stream = MixedStream(self.cfg, self.rank, self.world_size)
        stream.consumed = self.start_consumed
        n = 0
        while self.num_sequences is None or n < self.num_sequences:
            ids = stream.next_batch(1).input_ids[0]
            yield {"input_ids": ids, "labels": ids.clone()}
            n += 1
