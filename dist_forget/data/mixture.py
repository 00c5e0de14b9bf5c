"""The exact injected stream: target data (D unique tokens, repeated) mixed with a fraction p of pretraining.

Everything is a pure function of the global sequence index i, so the stream needs no buffers, resumes
from one integer and splits over ranks and workers without coordination:

- source: i is pretraining iff floor((i+1)p) > floor(ip), so after any k sequences exactly floor(kp) were
  pretraining. p is used as the exact fraction num/den with den <= 10^6 nearest to the float (0.01 is
  1/100), so the rule is integer arithmetic, never a float that drifts;
- a piecewise-constant p (`data.inject_fraction: auto`, engine/inject_control.py): the schedule is a list
  of segments (start sequence s_j, p_j = num_j/den_j). Within segment j the count is
  c_j + floor((r_j + (k - s_j) num_j) / den_j), where c_j is the count at s_j and the phase r_j in
  [0, den_j) carries the previous segment's fractional remainder (rounded down to 1/den_j): a change of
  p loses less than 1/den_j of a sequence, so after k sequences sum_{i<k} p_i - 1 - sum_j 1/den_j <
  count <= sum_{i<k} p_i (the controller's p have den_j near 10^6: within one sequence in practice). One segment from 0 is the constant rule above (r_0 = 0). Segments are only appended at
  the current position, so the past never changes; the schedule is in the state_dict;
- target: target ordinal t = i - floor(ip) reads the first ceil(D/seq_len) sequences of a seeded
  permutation of the target train split (the D unique tokens), in an order reshuffled every epoch;
- pretraining: ordinal j = floor(ip) walks a seeded permutation of the pretraining train split, a new
  one every epoch over it;
- ranks: rank r of W takes the global indices i = r (mod W) in order. A step of micro-batch b on each of
  W ranks consumes the global indices [c, c + W*b): the same sequences as one rank with micro-batch W*b.

The state is global (sequences consumed, world size, fingerprint) and identical on every rank.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dist_forget.data.manifest import Manifest, check_compatible
from dist_forget.data.remote import DEFAULT_CACHE_DIR, open_manifest
from dist_forget.data.shards import ShardSet
from dist_forget.errors import UserError

STATE_VERSION = 1
_TARGET_SUBSET, _TARGET_EPOCH, _PRETRAIN_EPOCH = 0x7A61, 0x7A62, 0x7A63  # seed-stream tags
MAX_DENOMINATOR = 1_000_000


@dataclass
class MixtureConfig:  # YAML section `data:` of train configs
    target: str = ""  # shard folder (manifest.json) of the target domain: a path or an http(s)/s3/gs URL
    pretrain: str | None = None  # shard folder of the pretraining mix; required when inject_fraction > 0
    inject_fraction: float | Literal["auto"] = 0.0  # p in [0, 1), or auto: adapted (engine/inject_control.py)
    max_forgetting: float | None = None  # auto: the budget eps, nats/token of pt_loss - pt_loss_base
    inject_max: float = 0.2  # auto: the largest p the controller may set
    # auto: a fit.json (dist-forget fit): the planner's p is the start; its bottom-step law, if any, tells the
    # controller where the U-curve bottoms out
    inject_prior: str | None = None
    target_tokens: int | None = None  # D unique target tokens; None = the whole train split
    seed: int = 0  # order of the target and pretraining sequences in the stream
    cache_dir: str = DEFAULT_CACHE_DIR  # where shards at a URL are cached, per manifest sha256

    @property
    def adaptive(self) -> bool:
        return self.inject_fraction == "auto"

    def validate(self) -> None:
        if self.adaptive:
            self._validate_auto()
            return
        if self.max_forgetting is not None or self.inject_prior is not None:
            raise UserError(
                "data.max_forgetting and data.inject_prior apply to data.inject_fraction=auto only; "
                "set inject_fraction=auto or drop them"
            )
        p = self.inject_fraction
        if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
            raise UserError(f"data.inject_fraction = {p!r} must be in [0, 1) (0.01 = 1 % pretraining data)")
        if p > 0 and not self.pretrain:
            raise UserError(
                f"data.inject_fraction = {p} needs data.pretrain, the shard dir of the pretraining mix"
            )
        if self.target_tokens is not None and self.target_tokens <= 0:
            raise UserError(
                f"data.target_tokens = {self.target_tokens} must be positive (or null for the whole split)"
            )

    def _validate_auto(self) -> None:
        eps = self.max_forgetting
        if eps is None:
            raise UserError(
                "data.inject_fraction=auto needs data.max_forgetting, the forgetting budget in nats/token "
                "(e.g. data.max_forgetting=0.5)"
            )
        if not (math.isfinite(eps) and eps > 0):
            raise UserError(f"data.max_forgetting = {eps} must be > 0 (nats/token of pt_loss - pt_loss_base)")
        if not 0 < self.inject_max < 1:
            raise UserError(f"data.inject_max = {self.inject_max} must be in (0, 1) (0.2 = 20 %)")
        if not self.pretrain:
            raise UserError(
                "data.inject_fraction=auto needs data.pretrain, the shard dir of the pretraining mix"
            )


@dataclass
class Batch:
    input_ids: torch.Tensor  # int64 [B, seq_len]; labels are input_ids (HF shifts inside)
    is_pretrain: torch.Tensor  # bool [B]
    global_indices: torch.Tensor  # int64 [B], positions in the global sequence order

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.is_pretrain.to(device), self.global_indices.to(device))


def exact_fraction(p: float) -> Fraction:
    return Fraction(p).limit_denominator(MAX_DENOMINATOR)


def pretrain_count(k: np.ndarray | int, frac: Fraction) -> np.ndarray | int:
    """How many of the first k global sequences are pretraining: floor(k p), exactly."""
    if isinstance(k, (int, np.integer)):
        return int(k) * frac.numerator // frac.denominator
    return np.asarray(k, dtype=np.int64) * frac.numerator // frac.denominator


# Fewer injected sequences than this over a whole run and p measures nothing: each of them is over a fifth
# of all the pretraining data the run sees, and floor(k·p) may round the nominal k·p down by as much (a
# run of 40 sequences at p = 1 % injects none at all).
FEW_INJECTED = 5


def few_injected(frac: Fraction, steps: int, batch: int) -> str | None:
    """A one-line warning when p > 0 injects fewer than FEW_INJECTED sequences in `steps` optimizer steps of
    `batch` sequences (all ranks), naming how many steps would inject that many; None otherwise."""
    total = steps * batch
    n = int(pretrain_count(total, frac))
    if frac <= 0 or n >= FEW_INJECTED:
        return None
    need = -(-FEW_INJECTED * frac.denominator // frac.numerator)  # the smallest k with floor(k p) >= 5
    return (
        f"p = {float(frac):g} injects {n} pretraining sequence{'s' * (n != 1)} over {steps} steps x {batch} "
        f"sequences ({total:,}){': the run trains as p = 0' if n == 0 else ''}; {-(-need // batch):,} steps "
        f"(or a larger batch) inject at least {FEW_INJECTED}"
    )


class Schedule:
    """The piecewise-constant p of a stream and its exact pretraining count (module docstring).

    Segment j starts at global sequence starts[j] with p = fracs[j]; counts[j] pretraining sequences came
    before it and phases[j] (in units of 1/den_j) is the fractional remainder carried into it.
    """

    def __init__(self, frac: Fraction):
        self.starts, self.fracs, self.phases, self.counts = [0], [frac], [0], [0]

    def count(self, k: np.ndarray | int) -> np.ndarray | int:
        """Pretraining sequences among the first k global sequences."""
        if len(self.starts) == 1 and self.phases[0] == 0:  # a constant p: floor(k p), as always
            return pretrain_count(k, self.fracs[0])
        scalar = isinstance(k, (int, np.integer))
        ks = np.atleast_1d(np.asarray(k, dtype=np.int64))
        seg = np.searchsorted(np.asarray(self.starts, dtype=np.int64), ks, side="right") - 1
        num = np.array([f.numerator for f in self.fracs], dtype=np.int64)[seg]
        den = np.array([f.denominator for f in self.fracs], dtype=np.int64)[seg]
        start = np.asarray(self.starts, dtype=np.int64)[seg]
        out = (
            np.asarray(self.counts, dtype=np.int64)[seg]
            + (np.asarray(self.phases, dtype=np.int64)[seg] + (ks - start) * num) // den
        )
        return int(out[0]) if scalar else out

    def fraction_at(self, k: int) -> Fraction:
        """p of the segment that holds global sequence k."""
        return self.fracs[int(np.searchsorted(self.starts, k, side="right")) - 1]

    def set(self, at: int, frac: Fraction) -> None:
        """p = frac from global sequence `at` on (at >= the last segment's start: the past is fixed)."""
        if at < self.starts[-1]:
            raise ValueError(f"schedule: a segment at {at} would rewrite the one from {self.starts[-1]}")
        if frac == self.fracs[-1]:
            return
        if at == self.starts[-1]:  # nothing was drawn at the last p: replace it
            if len(self.starts) == 1:
                self.fracs[0] = frac
                return
            for seq in (self.starts, self.fracs, self.phases, self.counts):
                seq.pop()
            if frac == self.fracs[-1]:
                return
        prev_frac, prev_start = self.fracs[-1], self.starts[-1]
        total = self.phases[-1] + (at - prev_start) * prev_frac.numerator
        count = self.counts[-1] + total // prev_frac.denominator
        phase = total % prev_frac.denominator * frac.denominator // prev_frac.denominator
        self.starts.append(at)
        self.fracs.append(frac)
        self.phases.append(phase)
        self.counts.append(count)

    def mean(self, k: int) -> float:
        """The sequence-weighted mean p over the first k global sequences (p of sequence 0 when k = 0)."""
        if k <= 0:
            return float(self.fracs[0])
        bounds = self.starts[1:] + [max(k, self.starts[-1])]
        total = sum(
            (min(end, k) - start) * f for start, end, f in zip(self.starts, bounds, self.fracs) if start < k
        )
        return float(Fraction(total) / k)

    def to_list(self) -> list[list[Any]]:
        return [[s, f"{f.numerator}/{f.denominator}"] for s, f in zip(self.starts, self.fracs)]

    @classmethod
    def from_list(cls, segments: Any) -> Schedule:
        """The schedule `to_list` wrote; ValueError when it is not one (starts rising from 0, p in [0, 1))."""
        if not isinstance(segments, list) or not segments:
            raise ValueError("schedule must be a non-empty list of [start, 'num/den']")
        out: Schedule | None = None
        for seg in segments:
            if not (isinstance(seg, list) and len(seg) == 2 and isinstance(seg[0], int)):
                raise ValueError(f"schedule segment {seg!r} is not [start, 'num/den']")
            frac = Fraction(str(seg[1]))
            if not 0 <= frac < 1:
                raise ValueError(f"schedule segment {seg!r}: p outside [0, 1)")
            if out is None:
                if seg[0] != 0:
                    raise ValueError(f"schedule starts at {seg[0]}, not 0")
                out = cls(frac)
            elif seg[0] <= out.starts[-1]:
                raise ValueError(f"schedule starts must rise: {seg[0]} after {out.starts[-1]}")
            else:
                out.set(seg[0], frac)
        assert out is not None
        return out


def _hash_parts(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class _EpochPermutations:
    """perm(epoch) of range(n) from a seeded generator; caches the last two epochs (a batch straddles one)."""

    def __init__(self, n: int, seed: int, tag: int):
        self.n, self.seed, self.tag = n, seed, tag
        self.cache: dict[int, np.ndarray] = {}

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch not in self.cache:
            if len(self.cache) >= 2:
                self.cache.pop(min(self.cache))
            self.cache[epoch] = np.random.default_rng([self.seed, self.tag, epoch]).permutation(self.n)
        return self.cache[epoch]

    def lookup(self, ordinals: np.ndarray) -> np.ndarray:
        epochs, pos = np.divmod(ordinals, self.n)
        if (
            len(ordinals) and epochs[0] == epochs[-1]
        ):  # ordinals ascend, so this is the common one-epoch batch
            return self(int(epochs[0]))[pos]
        out = np.empty_like(ordinals)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self(int(e))[pos[sel]]
        return out


class MixedStream:
    """This rank's view of the exact global stream; see the module docstring for the rules."""

    def __init__(self, cfg: MixtureConfig, rank: int = 0, world_size: int = 1):
        cfg.validate()
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(
                f"rank {rank} / world_size {world_size}: need world_size >= 1 and 0 <= rank < world_size"
            )
        if not cfg.target:
            raise UserError(
                "data.target is empty; set it to a shard dir with manifest.json (e.g. work/data/shards/code)"
            )
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.target_manifest = open_manifest(cfg.target, cfg.cache_dir)
        self.pretrain_manifest: Manifest | None = (
            open_manifest(cfg.pretrain, cfg.cache_dir) if cfg.pretrain else None
        )
        if self.pretrain_manifest is not None:
            check_compatible(self.target_manifest, self.pretrain_manifest)
        self.seq_len = self.target_manifest.seq_len
        self.vocab_size = self.target_manifest.vocab_size
        # auto: p = 0 until the controller sets its starting p (set_inject_fraction before the first batch)
        self.schedule = Schedule(self._exact(0.0 if cfg.adaptive else float(cfg.inject_fraction)))
        self.target = ShardSet(self.target_manifest, "train")
        n_train = len(self.target)
        available = n_train * self.seq_len
        want = cfg.target_tokens if cfg.target_tokens is not None else available
        self.target_sequences = math.ceil(want / self.seq_len)
        if self.target_sequences > n_train:
            raise UserError(
                f"data.target_tokens = {want} exceeds the target train split of {self.target_manifest.where}, "
                f"which has {available} tokens ({n_train} sequences of {self.seq_len}); "
                f"use target_tokens <= {available}"
            )
        self.unique_target_tokens = self.target_sequences * self.seq_len
        self._subset = np.random.default_rng([cfg.seed, _TARGET_SUBSET]).permutation(n_train)[
            : self.target_sequences
        ]
        self._target_order = _EpochPermutations(self.target_sequences, cfg.seed, _TARGET_EPOCH)
        self.pretrain: ShardSet | None = None
        self._pretrain_order: _EpochPermutations | None = None
        injects = cfg.adaptive or self.frac > 0
        if injects:
            assert self.pretrain_manifest is not None
            self.pretrain = ShardSet(self.pretrain_manifest, "train")
            self._pretrain_order = _EpochPermutations(len(self.pretrain), cfg.seed, _PRETRAIN_EPOCH)
        self.fingerprint_parts = {
            "target": self.target_manifest.fingerprint,
            "pretrain": self.pretrain_manifest.fingerprint if self.pretrain_manifest and injects else None,
            "inject_fraction": "auto" if cfg.adaptive else f"{self.frac.numerator}/{self.frac.denominator}",
            "target_tokens": self.unique_target_tokens,
            "seed": cfg.seed,
            "seq_len": self.seq_len,
            "world_size": world_size,
        }
        self.fingerprint = _hash_parts(self.fingerprint_parts)
        self.consumed = 0  # global sequences consumed by all ranks together

    @staticmethod
    def _exact(p: float) -> Fraction:
        frac = exact_fraction(p)
        if p > 0 and frac == 0:
            raise UserError(
                f"data.inject_fraction = {p} is below 1e-6, the finest fraction the exact "
                "stream represents; use 0 or at least 1e-6"
            )
        return frac

    @property
    def frac(self) -> Fraction:
        """p from the current position on (the last segment of the schedule)."""
        return self.schedule.fracs[-1]

    def set_inject_fraction(self, p: float) -> None:
        """auto only: p from the next global sequence on (every rank, with the same p, at the same step)."""
        if not self.cfg.adaptive:
            raise ValueError("set_inject_fraction needs data.inject_fraction=auto")
        if not 0 <= p < 1:
            raise ValueError(f"inject fraction {p} outside [0, 1)")
        self.schedule.set(self.consumed, self._exact(p))

    # ------------------------------------------------------------------------------- pure index maps
    def verify(self) -> None:
        """Hash and index every local shard of both splits of both sources now: a corrupt, replaced or
        edited shard is a UserError before a model is built, not after minutes of setup and the first
        evaluation. Shards at a URL are left to first use (each rank fetches only the shards it reads),
        where they are checked against the manifest as they arrive."""
        for shards in filter(None, (self.target, self.pretrain)):
            if shards.manifest.fetch is None:
                shards.verify()
        for manifest in filter(None, (self.target_manifest, self.pretrain_manifest)):
            for split in manifest.splits:
                if split != "train" and manifest.fetch is None:
                    ShardSet(manifest, split).verify()

    def sources(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For global indices: (is_pretrain, ordinal within its source)."""
        before = self.schedule.count(indices)
        is_pre = self.schedule.count(indices + 1) > before
        return is_pre, np.where(is_pre, before, indices - before)

    def target_rows(self, ordinals: np.ndarray) -> np.ndarray:
        """Target ordinals → row indices in the target train split."""
        return self._subset[self._target_order.lookup(ordinals)]

    def pretrain_rows(self, ordinals: np.ndarray) -> np.ndarray:
        assert self._pretrain_order is not None
        return self._pretrain_order.lookup(ordinals)

    def sequences(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids [n, seq_len] and is_pretrain [n] of arbitrary global indices."""
        indices = np.asarray(indices, dtype=np.int64)
        is_pre, ordinal = self.sources(indices)
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        tgt = ~is_pre
        if tgt.any():
            out[tgt] = self.target.gather(self.target_rows(ordinal[tgt]))
        if is_pre.any():
            assert self.pretrain is not None
            out[is_pre] = self.pretrain.gather(self.pretrain_rows(ordinal[is_pre]))
        return out, is_pre

    def batch_at(self, consumed: int, micro_batch_size: int) -> Batch:
        """This rank's micro-batch of the step that starts after `consumed` global sequences."""
        indices = consumed + self.rank + self.world_size * np.arange(micro_batch_size, dtype=np.int64)
        ids, is_pre = self.sequences(indices)
        return Batch(torch.from_numpy(ids), torch.from_numpy(is_pre), torch.from_numpy(indices))

    # ----------------------------------------------------------------------------------- the stream
    def next_batch(self, micro_batch_size: int) -> Batch:
        """This rank's next micro-batch; every rank must call it once per step with the same size."""
        if micro_batch_size < 1:
            raise UserError(f"micro_batch_size = {micro_batch_size} must be >= 1")
        batch = self.batch_at(self.consumed, micro_batch_size)
        self.consumed += micro_batch_size * self.world_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "consumed": self.consumed,
            "world_size": self.world_size,
            "fingerprint": self.fingerprint,
            "fingerprint_parts": dict(self.fingerprint_parts),
            "schedule": self.schedule.to_list(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (
            not isinstance(state, dict)
            or state.get("version") != STATE_VERSION
            or "fingerprint_parts" not in state
        ):
            raise UserError(
                "data stream state is not a dist-forget stream state (version "
                f"{state.get('version') if isinstance(state, dict) else None!r}); resume from a checkpoint "
                "written by this version or start a new run"
            )
        parts = state["fingerprint_parts"]
        if _hash_parts(parts) != state.get("fingerprint"):
            raise UserError(
                "data stream state: fingerprint does not match its parts (the checkpoint was edited); "
                "start a new run"
            )
        if parts.get("world_size") != self.world_size:
            raise UserError(
                f"data stream state was saved with world_size {parts.get('world_size')}, this run has "
                f"{self.world_size}; reshard the checkpoint (`dist-forget convert reshard`) or use "
                f"{parts.get('world_size')} ranks"
            )
        diffs = [
            f"{k} (checkpoint {parts.get(k)!r}, now {v!r})"
            for k, v in self.fingerprint_parts.items()
            if parts.get(k) != v
        ]
        if diffs:
            raise UserError(
                "data stream state does not match this data config: "
                + "; ".join(diffs)
                + "; resume with the same data config and shards, or start a new run"
            )
        consumed = state.get("consumed")
        if not isinstance(consumed, int) or consumed < 0:
            raise UserError(f"data stream state: consumed = {consumed!r} must be a non-negative integer")
        if "schedule" in state:  # states written before the schedule existed hold a constant p
            try:
                schedule = Schedule.from_list(state["schedule"])
            except ValueError as exc:
                raise UserError(
                    f"data stream state: {exc} (the checkpoint was edited); start a new run"
                ) from None
            if schedule.starts[-1] > consumed or (
                not self.cfg.adaptive and schedule.to_list() != self.schedule.to_list()
            ):
                raise UserError(
                    f"data stream state: schedule {state['schedule']} does not fit a stream at {consumed} "
                    f"sequences with inject_fraction {self.cfg.inject_fraction}; start a new run"
                )
            self.schedule = schedule
        self.consumed = consumed


def reshard_state_dict(state: dict[str, Any], new_world_size: int) -> dict[str, Any]:
    """The same stream position for another world size (the consumed count is global, so it carries over).

    The next step then starts at the same global sequence; with the global batch kept equal the rest of
    the stream is the same sequences, only spread over a different number of ranks.
    """
    if new_world_size < 1:
        raise UserError(f"new world size {new_world_size} must be >= 1")
    parts = dict(state["fingerprint_parts"], world_size=new_world_size)
    return {
        **state,
        "world_size": new_world_size,
        "fingerprint_parts": parts,
        "fingerprint": _hash_parts(parts),
    }


def validation_batches(
    folder: Manifest | str | Path,
    micro_batch_size: int,
    max_sequences: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    cache_dir: str | Path | None = None,
) -> Iterator[torch.Tensor]:
    """The val split of a shard folder (its manifest, path or URL) in fixed order: rank r gets sequences
    r, r+W, ... of the first `max_sequences`.

    Ranks may get one sequence more or less than each other when the count is not divisible by W:
    reduce summed losses and token counts after the loop, not per batch.
    """
    if micro_batch_size < 1:
        raise UserError(f"micro_batch_size = {micro_batch_size} must be >= 1")
    shards = ShardSet(folder, "val", cache_dir)
    if len(shards) == 0:
        raise UserError(
            f"{shards.manifest.where} has no validation sequences; re-shard with --val-fraction > 0"
        )
    n = len(shards) if max_sequences is None else min(max_sequences, len(shards))
    mine = np.arange(rank, n, world_size, dtype=np.int64)
    for start in range(0, len(mine), micro_batch_size):
        yield torch.from_numpy(shards.gather(mine[start : start + micro_batch_size]).astype(np.int64))


class MixedStreamDataset(torch.utils.data.IterableDataset):
    """A rank's stream as whole micro-batches, split over DataLoader workers with no overlap or gap.

    Worker w of K yields this rank's micro-batches w, w+K, w+2K, ...; `DataLoader(ds, batch_size=None,
    num_workers=K)` takes one from each worker in turn, so the order is exactly that of `next_batch`.
    Start from a saved stream position with `start_consumed` (MixedStream.state_dict()["consumed"]).
    """

    def __init__(
        self,
        cfg: MixtureConfig,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start_consumed: int = 0,
        num_batches: int | None = None,
    ):
        super().__init__()
        self.cfg, self.micro_batch_size = cfg, micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.start_consumed, self.num_batches = start_consumed, num_batches
        if cfg.adaptive:  # workers read ahead, but an adaptive p is only known at each evaluation
            raise UserError(
                "data.inject_fraction=auto streams are read by the trainer, not by DataLoader workers"
            )
        MixedStream(cfg, rank, world_size)  # fail fast in the parent on bad config or data

    def consumed_after(self, batches: int) -> int:
        """The global stream position after this rank has taken `batches` micro-batches."""
        return self.start_consumed + batches * self.micro_batch_size * self.world_size

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = MixedStream(self.cfg, self.rank, self.world_size)
        m = worker
        while self.num_batches is None or m < self.num_batches:
            yield stream.batch_at(self.consumed_after(m), self.micro_batch_size)
            m += workers
