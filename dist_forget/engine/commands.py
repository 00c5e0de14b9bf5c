"""`dist-forget pretrain` and `dist-forget finetune`: read the config, run the trainer."""

from __future__ import annotations

from dist_forget.config import load_config


def _run(mode: str, config: str, overrides: list[str], resume: str) -> int:
    from dist_forget.engine.config import RunConfig
    from dist_forget.engine.trainer import train

    cfg = load_config(RunConfig, config, overrides)
    train(cfg, mode, resume)  # type: ignore[arg-type]
    return 0


def pretrain(config: str, overrides: list[str], resume: str = "none") -> int:
    """Pretrain a ladder-size model from scratch on the pretraining shards (data.target, no injection).

    --resume auto continues from the latest checkpoint in out_dir; a path resumes from that checkpoint
    (one of out_dir's before its latest starts a branch: the later ones move to checkpoints/abandoned-*/).
    A resume keeps the settings that change the result (checkpoint/meta.py RESULT_NEUTRAL lists those
    that may change); one run at a time per out_dir (out_dir/run.lock).

    Args:
        config: run YAML (configs/pretrain/*.yaml), a view of engine/config.py's RunConfig
        overrides: config overrides as section.key=value, e.g. model.size=cpu-0.1m
        resume: none (refuse a used out_dir), auto (latest checkpoint in out_dir) or a checkpoint path
    """
    return _run("pretrain", config, overrides, resume)


def finetune(config: str, overrides: list[str], resume: str = "none") -> int:
    """Finetune model.init_from on data.target with pretraining injection data.inject_fraction.

    --resume auto continues from the latest checkpoint in out_dir; a path resumes from that checkpoint
    (one of out_dir's before its latest starts a branch: the later ones move to checkpoints/abandoned-*/).
    A resume keeps the settings that change the result (checkpoint/meta.py RESULT_NEUTRAL lists those
    that may change); one run at a time per out_dir (out_dir/run.lock).

    Args:
        config: run YAML (configs/finetune/*.yaml), a view of engine/config.py's RunConfig
        overrides: config overrides as section.key=value, e.g. data.inject_fraction=0.01
        resume: none (refuse a used out_dir), auto (latest checkpoint in out_dir) or a checkpoint path
    """
    return _run("finetune", config, overrides, resume)
