"""What a run tells MLflow about itself, shaped for a researcher's runs table and compare view.

- params: the resolved config, flattened (lists as JSON), without `tracking.*` (where to log is not what
  was run, and a resumed or synced run would show stale values) and without this machine's paths (any
  other absolute path is made relative to the run's root, below), plus the model as it was built:
  `model.size` (a finetune's base model is looked up on the ladder), `model.params_non_embedding` (N of
  the laws) and `model.params_total`. D is `data.target_tokens`: the unique target tokens the run
  trained on (whole sequences: the runs table's value), with the config's value as
  `data.target_tokens_requested`; p is `data.inject_fraction` (and, per step, the metric `inject_fraction`);
- tags: what no param says, as columns to sort, filter and group by (`stage`, `domain` as resolved from
  the target when the config names none; `size`, `anchor_decay`, `seed` beside their params for grouping),
  the run's paths relative to its root (`dist_forget.path.<key>`; the root is the sweep folder,
  `$DIST_FORGET_SWEEP_DIR`, else the folder holding out_dir, where the default store lives) and the base
  model's run id (`dist_forget.base_run_id`);
- dataset inputs: the target shards and the pretraining shards (name, manifest sha256 as digest, token
  counts per split in the profile), shown in the runs table's Dataset column. MLflow keeps one dataset per
  (name, digest) in an experiment, shared by its runs, so what differs per run (p, the D tokens used) is on
  the run's input tags (`inject_fraction`, `target_tokens`), next to `mlflow.data.context`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dist_forget.data.manifest import MANIFEST, Manifest
from dist_forget.data.remote import is_remote, local_path, location_name, scheme_of
from dist_forget.models.ladder import size_of
from dist_forget.tracking.config import relative, run_root

PATH_KEYS = ("out_dir", "model.init_from", "model.cache_dir", "data.target", "data.pretrain")
AXES = ("stage", "domain", "size", "anchor_decay", "seed")


def _is_path(key: str, value: Any) -> bool:
    if value in (None, "") or is_remote(str(value)):
        return False  # a URL (shards over HTTP / object storage) stays a param, redacted like the config
    # model.init_from may name a model instead of a folder (smollm2): that stays a param
    return key != "model.init_from" or Path(str(value)).exists()


def model_size(cfg_size: str | None, init_from: str | None, sig: dict[str, Any]) -> str:
    """The ladder name of the model that was built (also for a finetune, whose config names no size)."""
    found = cfg_size or size_of(sig["hidden"], sig["layers"], sig.get("ffn"))
    if found:
        return found
    if init_from and not Path(init_from).exists():
        return init_from  # a named model, e.g. smollm2
    return f"N{sig['non_embedding_params']}"


def params_and_tags(
    flat: dict[str, Any], mode: str, sig: dict[str, Any], target_tokens: int, out_dir: str | Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """(MLflow params, tags) of a run from its flattened, redacted config and the built model's signature."""
    root = run_root(out_dir)
    size = model_size(flat.get("model.size"), flat.get("model.init_from"), sig)
    params = {k: portable(v, root) for k, v in flat.items()
              if not k.startswith("tracking.") and not (k in PATH_KEYS and _is_path(k, v))}  # fmt: skip
    params.update({"model.size": size, "model.params_non_embedding": sig["non_embedding_params"],
                   "model.params_total": sig["total_params"], "data.target_tokens": target_tokens,
                   "data.target_tokens_requested": flat.get("data.target_tokens")})  # fmt: skip
    domain = flat.get("domain") or location_name(str(flat["data.target"]))
    tags = {
        "stage": mode,
        "domain": domain,
        "size": size,
        "anchor_decay": str(flat.get("optim.anchor_decay", 0.0)),
        "seed": str(flat.get("train.seed", 0)),
    }
    for key in PATH_KEYS:
        if _is_path(key, flat.get(key)):
            tags[f"dist_forget.path.{key}"] = relative(local_path(str(flat[key])), root)  # file:// too
    init = flat.get("model.init_from")
    if mode == "finetune" and init and (Path(str(init)) / "summary.json").is_file():
        try:
            base_id = json.loads((Path(str(init)) / "summary.json").read_text()).get("run_id", "")
        except (OSError, ValueError):
            base_id = ""
        if base_id and not str(base_id).startswith("local:"):
            tags["dist_forget.base_run_id"] = str(base_id)
    return params, tags


def portable(value: Any, root: Path) -> Any:
    """`value` with an absolute path (or a sqlite:/// URI of one) made relative to `root`, recursively
    through dicts and lists: what goes to the artifact store names no folder of this machine."""
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(portable(v, root) for v in value)
    if isinstance(value, str) and value.startswith("sqlite:///") and Path(value[10:]).is_absolute():
        return "sqlite:///" + relative(value[10:], root)
    if isinstance(value, str) and not is_remote(value) and Path(value).is_absolute():
        return relative(value, root)
    return value


def config_artifact(config: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """run_config.json as the artifact store gets it: the resolved config with its paths relative to the
    run's root (the file in out_dir keeps them as they were given, to rerun from the same place)."""
    return portable(config, run_root(out_dir))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_record(manifest: Manifest, context: str, out_dir: str | Path, **tags: Any) -> dict[str, Any]:
    """One MLflow dataset input (see tracking.mlflow_calls.dataset_inputs) for a shard folder."""
    assert manifest.directory is not None
    file = manifest.directory / MANIFEST
    sha = _sha256(file)
    splits = {name: {"sequences": s.sequences, "tokens": s.tokens} for name, s in manifest.splits.items()}
    prof = {
        "manifest_sha256": sha,
        "fingerprint": manifest.fingerprint,
        "seq_len": manifest.seq_len,
        "vocab_size": manifest.vocab_size,
        "tokenizer_sha256": manifest.tokenizer_sha256,
        "splits": splits,
    }
    where = manifest.origin or relative(manifest.directory, run_root(out_dir))  # a URL is shown redacted
    return {"name": manifest.domain, "digest": sha, "source_type": scheme_of(where) or "local",
            "source": json.dumps({"uri": where}),
            "profile": json.dumps(prof), "context": context,
            "tags": {k: str(v) for k, v in tags.items()}}  # fmt: skip


def datasets(stream: Any, inject_fraction: float | str, out_dir: str | Path) -> list[dict[str, Any]]:
    """The target shards (context `train`) and the pretraining shards (`injected` at p > 0 or `auto`, else
    `eval`: they still measure forgetting)."""
    records = [
        dataset_record(
            stream.target_manifest,
            "train",
            out_dir,
            role="target",
            target_tokens=stream.unique_target_tokens,
            inject_fraction=inject_fraction,
        )
    ]
    if stream.pretrain_manifest is not None:
        context = "injected" if inject_fraction == "auto" or inject_fraction > 0 else "eval"
        records.append(
            dataset_record(
                stream.pretrain_manifest,
                context,
                out_dir,
                role="pretraining",
                inject_fraction=inject_fraction,
            )
        )
    return records
