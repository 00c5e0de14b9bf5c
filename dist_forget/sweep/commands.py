"""`dist-forget sweep`: expand a sweep YAML, run its points (locally or as SLURM arrays), then fit."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Literal

from dist_forget.config import flatten, load_config, to_dict
from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic
from dist_forget.redact import redact_uri
from dist_forget.sweep.collect import fit_metrics, run_fit, sync_fallbacks, write_runs_table
from dist_forget.sweep.config import SweepConfig
from dist_forget.sweep.grid import Point, expand, sweep_dir
from dist_forget.sweep.keep import changed_command, keep, restore
from dist_forget.sweep.pool import LocalPool, Outcome
from dist_forget.tracking import Tracker, TrackingConfig
from dist_forget.tracking.config import PARENT_ENV, ROOT_ENV, relative, resolve
from dist_forget.tracking.server import LocalServer
from dist_forget.tracking.store import ui_command


def sweep(
    config: str,
    overrides: list[str],
    backend: Literal["local", "slurm"] = "local",
    max_parallel: int = 0,
    dry_run: bool = False,
    collect_only: bool = False,
    submit: bool = False,
    wait: bool = False,
    tracking_server: bool = False,
) -> int:
    """Run a sweep: pretrain the ladder, finetune the grid, collect runs.csv, fit the laws.

    Resumable: a run with a summary.json is never redone and a killed sweep continues where it stopped
    (runs resume from their checkpoints). --backend slurm writes sbatch array scripts instead of running
    (--submit submits them, --wait follows them to the end); --dry-run lists the runs; --collect-only only
    gathers runs.csv and fits. Overrides (key=value) apply to the sweep YAML, e.g. max_parallel=2
    grid.seeds=[0,1], and reach every generated script.

    Args:
        config: sweep YAML (configs/sweep/*.yaml)
        overrides: sweep YAML overrides as key=value, e.g. max_parallel=2 grid.seeds=[0,1]
        backend: local: run here in parallel; slurm: write sbatch array scripts and submit.sh
        max_parallel: runs at once; 0 = the YAML's max_parallel (0 there: cores // threads_per_run)
        dry_run: list the runs (done/todo) and exit
        collect_only: run nothing; gather runs.csv, fit and log to the parent run
        submit: with --backend slurm: submit the runs without summary.json (pretrain array, finetune array,
            collect + fit) and print the job ids; rerun to resubmit only what failed
        wait: with --backend slurm: follow the submitted jobs (finished/running/failed per array, ETA) until
            the collect job ends; without --submit, the last submission's
        tracking_server: with --submit --wait: serve the sweep's MLflow store from an `mlflow server` on this
            host while the jobs run and point every task at it (SLURM tasks must not share a sqlite file)
    """
    cfg = load_config(SweepConfig, config, overrides)
    if max_parallel:
        cfg.max_parallel = max_parallel
    points = expand(cfg)
    root = sweep_dir(cfg)
    changed = {p.name for p in changed_command(points)}
    if dry_run:
        for p in points:
            state = "changed" if p.name in changed else "done" if p.done() else "todo"
            print(f"{state} {p.name}: {' '.join(p.argv)}")
        print(f"{len(points)} runs ({sum(p.done() for p in points)} finished) under {root}")
        return 0
    if changed:
        # a study must never report one configuration's results under another's
        raise UserError(
            f"sweep: {len(changed)} finished runs under {root} were made with another command than this "
            f"sweep YAML's (e.g. {min(changed)}, see its sweep_point.json); delete those run folders to run "
            f"them again, or set out_dir to a new folder"
        )
    if backend != "slurm" and (submit or wait or tracking_server):
        raise UserError("--submit, --wait and --tracking-server go with --backend slurm")
    if backend == "slurm":
        return _slurm(cfg, config, overrides, points, root, submit, wait, tracking_server)
    root.mkdir(parents=True, exist_ok=True)
    _restore_kept(cfg, points)
    _keep_finished(cfg, points)  # what an earlier, killed sweep finished and did not keep
    parent = _parent_tracker(cfg, root, config, points)
    env = _child_env(cfg, parent)
    by_name = {p.name: p for p in points}

    def on_event(outcome: Outcome, running: int) -> None:
        _progress(parent, outcome, running)
        if outcome.finished:  # the run that just ended (already kept when this event is a start)
            _keep_finished(cfg, [by_name[outcome.finished[-1]]])

    try:
        outcome = Outcome(already=[p.name for p in points if p.done()])
        if not collect_only:
            parallel = cfg.max_parallel or max(1, (os.cpu_count() or 1) // cfg.threads_per_run)
            outcome = LocalPool(points, parallel, env, on_event=on_event).run()
        ok = _collect(cfg, points, root, parent, outcome)
    except KeyboardInterrupt:
        parent.finish("KILLED")
        raise
    except BaseException:
        parent.finish("FAILED")
        raise
    parent.finish("FINISHED" if ok else "FAILED")
    if parent.run_id:
        print(f"MLflow: {ui_command(sweep_uri(cfg, root))}")
    return 0 if ok else 1


_EXPORTED = (  # into every generated sbatch script (a task's environment is otherwise the submitter's)
    "PYTHONPATH",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    PARENT_ENV,
    ROOT_ENV,
)


def _slurm(
    cfg: SweepConfig,
    config: str,
    overrides: list[str],
    points: list[Point],
    root: Path,
    submit: bool,
    wait: bool,
    tracking_server: bool,
) -> int:
    """--backend slurm: write the scripts; --submit them; --wait for them (with --tracking-server, serving MLflow)."""
    from dist_forget.sweep import slurm_jobs
    from dist_forget.sweep.slurm import write_slurm

    if wait and not submit:  # follow the last submission
        if tracking_server:
            raise UserError("--tracking-server starts with the jobs it serves: use it with --submit --wait")
        return 0 if slurm_jobs.wait(cfg, points, root, slurm_jobs.read_jobs(root), cfg.slurm.poll_s) else 1
    if tracking_server and not (submit and wait and cfg.tracking.enabled):
        raise UserError(
            "--tracking-server serves MLflow for as long as this command follows the jobs: add --submit --wait"
            if cfg.tracking.enabled
            else "--tracking-server: tracking.enabled is false, there is nothing to serve; drop it"
        )
    if tracking_server and cfg.tracking.uri:
        raise UserError(
            f"--tracking-server serves the sweep's own store ({root / 'mlflow.db'}) but tracking.uri = "
            f"{redact_uri(cfg.tracking.uri)} names another: drop one of them"
        )
    if not tracking_server:
        _refuse_shared_sqlite(cfg, root)
    root.mkdir(parents=True, exist_ok=True)
    _restore_kept(cfg, points)  # before submitting: what was kept is not run again
    server = _start_tracking_server(cfg, root) if tracking_server else None
    try:
        if server is not None:
            cfg.tracking.uri = server.uri
            overrides = [*overrides, f"tracking.uri={server.uri}"]  # the collect job's sweep uses it too
        parent = _parent_tracker(cfg, root, config, points)
        env = _child_env(cfg, parent)
        try:
            path = write_slurm(
                cfg, Path(config), overrides, points, root, {k: env[k] for k in _EXPORTED if k in env}
            )
        except BaseException:
            parent.finish("FAILED")
            raise
        # before any job starts: collect.sbatch (--collect-only) resumes this run and finishes it
        parent.finish("SCHEDULED")
        print(f"wrote SLURM array scripts for {len(points)} runs under {path.parent}")
        if not submit:
            print(f"submit on the cluster with: bash {path} (add --wait to follow the jobs)")
            return 0
        jobs = slurm_jobs.submit(cfg, points, root)
        if not wait:
            return 0
        try:
            return 0 if slurm_jobs.wait(cfg, points, root, jobs, cfg.slurm.poll_s) else 1
        except KeyboardInterrupt:
            print("stopped waiting; the jobs go on in SLURM (follow them again with --wait)", file=sys.stderr)
            if server is not None:
                print("the MLflow server stops now: runs log to <run>/mlflow_fallback.jsonl until "
                      "`dist-forget track sync` uploads them", file=sys.stderr)  # fmt: skip
            raise
    finally:
        if server is not None:
            server.stop()


def _start_tracking_server(cfg: SweepConfig, root: Path) -> LocalServer:
    """`mlflow server` on this host over the sweep's own store (mlflow.db + mlartifacts/, the local default),
    reached by the tasks at this host's name: the name SLURM records as the submit host."""
    host = socket.gethostname()
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        raise UserError(
            f"--tracking-server: this host's name {host!r} does not resolve, so no node could reach the "
            "server; start `mlflow server --host 0.0.0.0` yourself and set tracking.uri=http://ADDRESS:PORT"
        ) from None
    server = LocalServer(root / "tracking_server", store=root, host=host).start()
    print(f"MLflow server for the sweep's tasks: {server.uri} (store {root / 'mlflow.db'}; log "
          f"{server.root / 'server.log'}); it stops when this command ends")  # fmt: skip
    return server


def _refuse_shared_sqlite(cfg: SweepConfig, root: Path) -> None:
    """SLURM array tasks, possibly on many nodes, must not all write one sqlite file (NFS/Lustre locks fail)."""
    uri = sweep_uri(cfg, root)
    if cfg.tracking.enabled and (uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        raise UserError(
            f"sweep --backend slurm: every array task would write the sqlite store {redact_uri(uri)} at once, "
            "which locks or corrupts on a shared filesystem; add --tracking-server --submit --wait (an mlflow "
            "server on this host for the sweep), or set tracking.uri=http://HOST:PORT of a running `mlflow "
            "server`, or tracking.enabled=false"
        )


def _parent_tracker(cfg: SweepConfig, root: Path, config: str, points: list[Point]) -> Tracker:
    """The sweep's MLflow parent run, reused by a rerun (its id is kept in sweep_state.json)."""
    state_path = root / "sweep_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    tcfg = TrackingConfig(**{**cfg.tracking.__dict__})
    tcfg.uri = sweep_uri(cfg, root)
    tcfg.run_id = state.get("parent_run_id")
    tcfg.parent_run_id = None
    tcfg.system_metrics = False  # the parent only waits; each run monitors its own machine
    # What was swept, as columns that compare across sweeps; paths are tags relative to the sweep folder.
    params: dict[str, object] = {"sweep.name": cfg.name, "sweep.runs": len(points),
                                 **{f"grid.{k}": v for k, v in flatten(to_dict(cfg.grid)).items()},
                                 "pretrain.sizes": cfg.pretrain.sizes if cfg.pretrain else [],
                                 "finetune.domains": sorted(cfg.finetune.domains)}  # fmt: skip
    tags = {"stage": "sweep", "dist_forget.kind": "sweep", "dist_forget.path.config": relative(config, root)}
    # $MLFLOW_RUN_ID names one run; it is neither the sweep's parent nor any of its runs.
    leaked = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        parent = Tracker.create(tcfg, 0, f"sweep-{cfg.name}", params, root, tags, "dist-forget sweep")
    except UserError:  # the remembered parent run is gone (e.g. a new store): start a new one
        tcfg.run_id = None
        parent = Tracker.create(tcfg, 0, f"sweep-{cfg.name}", params, root, tags, "dist-forget sweep")
    finally:
        if leaked is not None:
            os.environ["MLFLOW_RUN_ID"] = leaked
    if parent.run_id:
        write_json_atomic(
            state_path, {**state, "parent_run_id": parent.run_id, "tracking_uri": redact_uri(tcfg.uri)}
        )
    return parent


def sweep_uri(cfg: SweepConfig, root: Path) -> str:
    """The sweep's MLflow store: tracking.uri, else $MLFLOW_TRACKING_URI, else <sweep>/mlflow.db."""
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def _child_env(cfg: SweepConfig, parent: Tracker) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}  # each run is its own MLflow run
    threads = str(cfg.threads_per_run)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false")
    # One store and experiment for the whole sweep (else each run's default store is beside its folder).
    env["MLFLOW_TRACKING_URI"] = sweep_uri(cfg, sweep_dir(cfg))
    env["MLFLOW_EXPERIMENT_NAME"] = resolve(cfg.tracking, Path(".")).experiment
    if parent.run_id:
        # Every run, pretrain and finetune alike, is a direct child of the sweep's run; the `stage` tag groups
        # them (Group by: stage in the runs table) and a finetune's `dist_forget.base_run_id` names its base
        # model's run. Not finetunes nested under their base model: the laws and the compare view work
        # across sizes (N is an axis), and a three-level tree would scatter one p = 0 vs 1 % comparison
        # over as many subtrees as there are sizes, each expanded by hand.
        env[PARENT_ENV] = parent.run_id
    env[ROOT_ENV] = str(sweep_dir(cfg))  # runs tag their paths relative to the sweep folder
    # The sweep's own command is importable from the working directory it was started in.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    return env


def _progress(parent: Tracker, outcome: Outcome, running: int) -> None:
    done = len(outcome.finished) + len(outcome.already)
    parent.log_metrics({"sweep/finished": done, "sweep/failed": len(outcome.failed), "sweep/running": running},
                       step=done + len(outcome.failed))  # fmt: skip


def _fit_out(args: list[str], runs_csv: Path, root: Path) -> Path:
    """The folder `dist-forget fit` wrote to (its --out), as run_fit fills the templates."""
    filled = [a.format(runs_csv=runs_csv, sweep_dir=root) for a in args]
    return Path(filled[filled.index("--out") + 1]) if "--out" in filled[:-1] else root / "fit"


def _log_fit(parent: Tracker, fit_dir: Path, n_runs: int) -> None:
    """The fit on the parent run: fit.json, REPORT.md and every plot under `fit/`, the fitted parameters,
    errors and warning counts as `fit/<domain>/<form>/...` metrics (see collect.fit_metrics) at step = the
    runs it was fitted on, so refits of a growing sweep form a history."""
    fit_json = fit_dir / "fit.json"
    if not fit_json.is_file():
        return
    try:
        metrics = fit_metrics(json.loads(fit_json.read_text()))
    except (OSError, ValueError) as exc:
        print(f"warning: {fit_json} unreadable ({exc}); its values are not logged to MLflow", file=sys.stderr)
        metrics = {}
    if metrics:
        parent.log_metrics(metrics, step=n_runs)
    for path in sorted(fit_dir.iterdir()):
        if path.is_file() and path.suffix in (".json", ".md", ".png", ".csv"):
            parent.log_artifact(path, "fit")


def _restore_kept(cfg: SweepConfig, points: list[Point]) -> None:
    if cfg.keep_runs:
        restored, refused = restore(points, Path(cfg.keep_runs))
        if restored:
            print(f"restored {len(restored)} finished runs from {cfg.keep_runs}")
        if refused:
            print(
                f"not restored: {len(refused)} runs in {cfg.keep_runs} were made with another command "
                f"than this sweep's (e.g. {refused[0]}); they run again and their new results replace them"
            )


def _keep_finished(cfg: SweepConfig, points: list[Point]) -> None:
    if cfg.keep_runs:
        for name in keep(points, Path(cfg.keep_runs)):
            print(f"kept   {name} in {cfg.keep_runs}")


def _collect(cfg: SweepConfig, points: list[Point], root: Path, parent: Tracker, outcome: Outcome) -> bool:
    _keep_finished(cfg, points)  # also what a SLURM task or an earlier sweep finished
    if cfg.tracking.enabled:
        sync_fallbacks(points)
    for name, why in outcome.failed.items():
        print(f"failed: {name}: {why}", file=sys.stderr)
    runs_csv = root / "runs.csv"
    n = write_runs_table(points, runs_csv)
    finetunes = sum(p.stage == "finetune" for p in points)
    print(f"runs table: {n} of {finetunes} finetune runs in {runs_csv}")
    fitted: bool | None = None
    if n:
        parent.log_artifact(runs_csv)
        if cfg.fit.enabled:
            fitted = run_fit(cfg.fit.args, runs_csv, root)
            _log_fit(parent, _fit_out(cfg.fit.args, runs_csv, root), n)
    print(f"sweep {cfg.name}: {len(outcome.finished)} runs finished now, {len(outcome.already)} before, "
          f"{len(outcome.failed)} failed; results under {root}")  # fmt: skip
    return outcome.ok and fitted is not False
