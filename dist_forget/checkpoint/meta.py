"""What every training checkpoint holds beside the backend's files, and the checks a resume makes on it.

- `meta.json` (plain JSON, readable without torch): the model signature, data-stream fingerprint, world
  size, engine and ZeRO stage, the resolved config and the mode. `check_compatible` refuses a resume from a
  checkpoint another model, data stream, world size or engine wrote, before any backend opens a file.
- `hf_config.json`: the transformers config of the model, where `convert zero-to-hf` looks for it.
- the client state: what the trainer saves inside the backend's rank files (`DATA`: the data-stream
  state, `TRAIN`: the loop's progress (engine/run_state.py) with the inject controller's state as its
  `CONTROL` key, `CONFIG`: the resolved config), packed and unpacked here only, because the converters
  rewrite it (`reshard_client`) as well as the trainer reading it. The trainer hands each stateful part's
  `state_dict()` by name (`DATA`, `TRAIN`, `CONTROL`) and gets each one's saved state back by that name.

`reshard_meta` is the one rewrite of meta.json for another layout (ZeRO world size, Megatron
data-parallel size).

`config_changes` compares the config a resume runs with to the one its checkpoint recorded: a setting that
changes what the run computes may not change (one line listing each, with both values); the settings in
`RESULT_NEUTRAL` may, and the changes are returned for the run to record.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dist_forget.config import flatten
from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic

META = "meta.json"
HF_CONFIG = "hf_config.json"
DATA, TRAIN, CONFIG = "data", "train", "config"  # the trainer's client-state keys
# data.inject_fraction=auto's controller: its state is a key of TRAIN (None in a run without one), the
# place every checkpoint written so far keeps it
CONTROL = "inject_control"


def pack_client(states: Mapping[str, dict[str, Any]], config: str) -> dict[str, Any]:
    """The trainer's client state (plain data: every backend saves it weights-only-loadable) from the
    `state_dict()` of each stateful part by name: DATA, TRAIN and, in a run that has one, CONTROL."""
    return {DATA: states[DATA], TRAIN: train_record(states), CONFIG: config}


def train_record(states: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The client state's TRAIN entry: the run state with CONTROL's state (None without one) in it."""
    return {**states[TRAIN], CONTROL: states.get(CONTROL)}


def unpack_client(client: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The saved state of each stateful part by name (DATA, TRAIN, and CONTROL when the checkpoint holds
    one) of a client state `pack_client` made."""
    train = client[TRAIN]
    if isinstance(train, str):  # checkpoints written before the run state had state_dict(): a JSON string
        train = json.loads(train)
    train = dict(train)
    control = train.pop(CONTROL, None)
    return {DATA: client[DATA], TRAIN: train, **({CONTROL: control} if control is not None else {})}


def reshard_client(
    client: dict[str, Any], dp: int | None = None, parallel: dict[str, int] | None = None
) -> dict[str, Any]:
    """A copy of a client state for `dp` data-parallel replicas (the stream re-keyed) and, when given, the
    new `parallel` sizes in its recorded config. Other keys (a backend's own, e.g. DeepSpeed's) are kept."""
    from dist_forget.data.mixture import reshard_state_dict

    client = dict(client)
    if dp is not None and client.get(DATA) is not None:
        client[DATA] = reshard_state_dict(client[DATA], dp)
    if parallel and isinstance(client.get(CONFIG), str):  # the recorded run config: say what the layout is
        run_cfg = json.loads(client[CONFIG])
        run_cfg.setdefault("parallel", {}).update(parallel)
        client[CONFIG] = json.dumps(run_cfg)
    return client


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / META, meta)


def write_hf_config(folder: Path, hf_config: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / HF_CONFIG, hf_config)


def is_training_checkpoint(path: Path) -> bool:
    return (Path(path) / META).is_file()


def copy_hf_config(src: Path, dst: Path) -> None:
    """Copy `hf_config.json` from checkpoint `src` into `dst` when it has one."""
    if (Path(src) / HF_CONFIG).is_file():
        (Path(dst) / HF_CONFIG).write_bytes((Path(src) / HF_CONFIG).read_bytes())


def reshard_meta(
    meta: dict[str, Any],
    src: Path,
    world_size: int,
    data: tuple[Any, Any] | None = None,
    parallel: dict[str, int] | None = None,
    before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """meta.json of checkpoint `src` rewritten for `world_size` ranks.

    `data`: (old, new) data-stream state when the stream was re-keyed; the stream fingerprint includes the
    world size, so meta takes the new one, after checking the old one is what meta recorded.
    `parallel`: new model-parallel sizes for the recorded config; `before`: the old layout, recorded in
    `resharded_from` (default: the old world size)."""
    meta = copy.deepcopy(meta)
    if data is not None and meta.get("data_fingerprint") is not None:
        old, new = data
        if not isinstance(old, dict) or old.get("fingerprint") != meta["data_fingerprint"]:
            raise UserError(
                f"{Path(src) / META}: data_fingerprint does not match the data-stream state saved beside "
                "it (the checkpoint was edited or mixed up); reshard an untouched checkpoint"
            )
        meta["data_fingerprint"] = new["fingerprint"]
    if parallel and isinstance(meta.get("config"), dict):
        meta["config"].setdefault("parallel", {}).update(parallel)
    meta["resharded_from"] = {
        "path": str(Path(src).resolve()),
        **(before if before is not None else {"world_size": meta.get("world_size")}),
    }
    meta["world_size"] = world_size
    return meta


def check_compatible(
    meta: dict[str, Any],
    path: Path,
    *,
    model: dict[str, Any],
    fingerprint: str,
    world_size: int,
    engine: str,
    zero_stage: int,
    data_parallel: int | None = None,
) -> None:
    """Refuse to resume from a checkpoint that another model, data stream or world size wrote.

    engine=megatron checkpoints hold global tensors that load at any TP/PP: for them only the number of
    data-parallel replicas (`data_parallel`), over which the data stream is split, must match."""
    if meta.get("model") != model:
        raise UserError(
            f"checkpoint {path} holds another model ({_describe(meta.get('model'))}) than this "
            f"config ({_describe(model)}); use that model's config or another out_dir"
        )
    if engine == "megatron" and meta.get("engine") == "megatron":
        saved = meta.get("data_parallel")
        if saved != data_parallel:
            raise UserError(
                f"checkpoint {path} was written by {saved} data-parallel replicas, this run has "
                f"{data_parallel}; its tensors load at any parallel.tp/pp, but the data stream is split per "
                f"replica: launch {saved} x tp x pp ranks, or run `dist-forget convert reshard-megatron "
                f"--checkpoint {path} --out DIR --world-size {world_size}` and resume from DIR"
            )
    elif meta.get("world_size") != world_size:
        raise UserError(
            f"checkpoint {path} was written by {meta.get('world_size')} ranks, this run has "
            f"{world_size}; run `dist-forget convert reshard --checkpoint {path} --out DIR "
            f"--world-size {world_size}` and resume from DIR, or launch {meta.get('world_size')} ranks"
        )
    if meta.get("data_fingerprint") != fingerprint:
        raise UserError(
            f"checkpoint {path} was trained on data stream {meta.get('data_fingerprint')}, this "
            f"config gives {fingerprint} (data, p, D, seed or shards changed); restore the data "
            "settings or start a new out_dir"
        )
    if meta.get("engine") != engine or meta.get("zero_stage") != zero_stage:
        raise UserError(
            f"checkpoint {path} was written by engine={meta.get('engine')} "
            f"zero_stage={meta.get('zero_stage')}, this run uses engine={engine} "
            f"zero_stage={zero_stage}; resume with the same engine settings"
        )


def _describe(sig: Any) -> str:
    if not isinstance(sig, dict):
        return "unknown"
    return (
        f"{sig.get('size') or sig.get('architecture')}: hidden {sig.get('hidden')}, layers {sig.get('layers')}, "
        f"vocab {sig.get('vocab')}, N {sig.get('non_embedding_params')}"
    )


# The settings a resume may change: none of them changes a number the run computes or reports. Every other
# key (optim.*, schedule.*, data.*, model.size/init_from, train.* below, engine, parallel.zero_stage) must
# match the checkpoint's. Not here, on purpose:
# - train.eval_every, train.eval_sequences: which steps are evaluated, on how many sequences, decides the
#   best step, i.e. the runs-table row, and the early stop; under data.inject_fraction=auto also when p moves;
# - train.patience, stop_rise, stop_sustained: when the run stops; schedule.steps: the lr of every step.
RESULT_NEUTRAL = (
    "out_dir",  # where the run lives (a folder copied elsewhere resumes there)
    "name",  # the MLflow run name
    "domain",  # the runs-table label of the whole run
    "model.cache_dir",  # where `smollm2` is cached
    "data.cache_dir",  # where shards at a URL are cached (their content is in the data fingerprint)
    "train.peak_flops",  # MFU's denominator only
    "checkpoint.",  # how often and how many checkpoints are kept
    "tracking.",  # where metrics go
    "preempt.",  # which signals save and stop the run
    "parallel.timeout_s",  # how long a collective may wait before the run stops
    # layout: the same sums in another order (fp32 rounding only), as a resume at another world size is
    "train.micro_batch",
    "parallel.tp",
    "parallel.pp",
    "parallel.impl",
)
# `auto` is bf16 on a GPU, fp32 on a CPU: the precision it resolved to is compared
PRECISION_KEY = "train.precision (resolved)"


def _neutral(key: str) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in RESULT_NEUTRAL)


def config_changes(
    meta: dict[str, Any], path: Path, config: dict[str, Any], precision: str
) -> list[dict[str, Any]]:
    """The result-neutral settings this resume changes ({key, old, new}); raises a one-line UserError
    listing every other changed setting. `config`: this run's resolved, redacted config (what meta.json
    records); `precision`: the one it resolved to. A key one side lacks (a setting added or removed by
    another dist-forget version) is not compared."""
    saved = meta.get("config")
    if not isinstance(saved, dict):
        return []  # written before checkpoints recorded their config
    old = flatten(saved)
    new = flatten(json.loads(json.dumps(config)))  # as meta.json holds it: tuples are lists
    if meta.get("precision") is not None:
        old[PRECISION_KEY], new[PRECISION_KEY] = meta["precision"], precision
    changed = [(k, old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
    refused = [f"{k} {o!r} -> {n!r}" for k, o, n in changed if not _neutral(k)]
    if refused:
        raise UserError(
            f"checkpoint {path} was trained with other settings: {', '.join(refused)}; a resume continues the "
            "same run: restore them (e.g. the command line it was started with), or start a new out_dir "
            "for a new run"
        )
    return [{"key": k, "old": o, "new": n} for k, o, n in changed]
