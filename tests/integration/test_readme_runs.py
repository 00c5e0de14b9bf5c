"""README.md runs as written, in a new shell after its two set-up lines: every `dist-forget` line of its
pipeline block, in order, its launcher lines, and its Quickstart and MLflow lines.

Every line runs in a login bash after the README's `source .venv/bin/activate` (tests/integration/
newshell.py: none of the variables `make` exports, no virtualenv on PATH before that line; `.venv` is the
virtualenv running the tests, which `make install` made), so a command that works only inside `make` or
only with the virtualenv's full path fails here.

The lines are read from README.md (never copied here) and run in a scratch folder laid out like the
repository: `configs/` and `launchers/` link to the real ones, and every relative path the README names
(`work/...`, `hf/`, `meg/`) is made there by the commands themselves, in README order (`reports/` links to
the committed reports, which the Quickstart's planner line reads). What the test adds, and nothing else
(a README line that needs more than this fails the test):

- OMP_NUM_THREADS=1 (2 cores shared with the other xdist worker);

- sizes, added to a line (the table `SIZES`; overrides go right after `--config C`): the corpora are the tiny samples in tests/data, seeded as
  already fetched (fetching needs the Debian/PyPI registries: tests/unit/test_data_corpora.py), with a
  512-token vocabulary and 64-token sequences; every run takes 4 steps of 4 sequences; the sweep pretrains
  its ladder 4 steps, finetunes on D in {2048, 4096} (Anchored AdamW at the smaller D only) and its
  fit draws 10 bootstrap samples, like the other fits;
- one path: the convert lines name the checkpoint of step 100, which the 4-step run calls step-00000004;
- the `--resume auto` line finds the run as a crash during its step 3 leaves it (`_crashed_after_step_2`);
  MLflow is down while it runs (its store's folder is a plain file) and back before `track sync`, so that
  the sync line has metrics to upload; sweep runs are not tracked (time);
- launcher lines: `out_dir=work/launch-<i>` each (they would share one), free ports instead of the defaults
  29500/29400 that other jobs on a machine may hold; the `sbatch` line runs on the test's SLURM cluster
  (tests/integration/conftest.py: 2 nodes on loopback) with `--wait --output=FILE` added, so that it
  returns when the job ends;
- the block of shards over HTTP: its server line runs in the background on 127.0.0.1 and a free port
  instead of 0.0.0.0:8000, the node address 10.0.0.1:8000 in the URLs becomes that address, and the
  launch line gets `data.cache_dir=work/shard-cache` (not the user's ~/.cache);
- `mlflow ui` lines get `--host 127.0.0.1 --port <free port>` (not 5000, which other jobs may hold): each
  runs until the server answers, then stops;
- Quickstart lines that are not run, and why, are in `QUICKSTART_NOT_RUN`: their `--help` runs instead;
- the SLURM sweep block runs after the pipeline, on that cluster, with the pipeline's sweep sizes (tracked:
  it serves MLflow) and `slurm.poll_s=1`: every run has finished in the pipeline, so it resubmits none
  and submits the collect + fit job alone.

`plan` may answer "no p in [0, 1] meets the budget" on these barely trained models, which is its exit 1,
or refuse their degenerate fit ("cannot answer", exit 2): each means that the line ran. Launcher lines that are not run, and why, are in `NOT_RUN`.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dist_forget.data.documents import DOCUMENTS
from dist_forget.data.tokenizer import file_sha256
from dist_forget.net import free_port
from tests.integration.launching import ROOT, run_together
from tests.integration.newshell import (
    in_new_shell,
    link_venv,
    new_shell_env,
    serve_until_healthy,
    setup_lines,
    stop,
)

pytestmark = pytest.mark.slow
README = ROOT / "README.md"
DATA = ROOT / "tests" / "data"

RUN = [
    "schedule.steps=4",
    "schedule.warmup=1",
    "train.batch_size=4",
    "train.micro_batch=2",
    "train.eval_every=2",
    "train.eval_sequences=8",
    "checkpoint.every=2",
    "train.peak_flops=1e11",
]  # peak fixed: no matmul timing
SWEEP_RUN = ["train.eval_sequences=8", "train.peak_flops=1e11", "tracking.enabled=false"]
SWEEP = [
    "tracking.enabled=false",
    "pretrain.tokens_per_param=0.01", "pretrain.min_tokens=1024", "pretrain.batch_size=4",  # 4 steps each
    "pretrain.overrides=" + json.dumps(["optim.lr=6.0e-3", "schedule.warmup=1", "train.eval_every=0",
                                        "checkpoint.every=0", *SWEEP_RUN]),
    "finetune.overrides=" + json.dumps(["schedule.steps=4", "schedule.warmup=1", "train.batch_size=4",
                                        "train.micro_batch=4", "train.eval_every=2", *SWEEP_RUN]),
    "grid.target_tokens=[2048,4096]", "grid.inject_fraction=[0.0,0.01]", "pretrain.count=non_embedding",
    'finetune.domains={"legal": "work/data/shards/code"}',  # the tiny samples have no legal text
    'extra_grids=[{"inject_fraction": [0.0], "anchor_decay": [10.0], "target_tokens": [2048]}]',  # 1 per size
    "fit.args=" + json.dumps(["--runs", "{runs_csv}", "--out", "{sweep_dir}/fit", "--holdout", "largest",
                              "--bootstrap", "10"]),
]  # fmt: skip
# the SLURM sweep line serves MLflow to its jobs (--tracking-server): tracked, and looking at the queue often
SLURM_SWEEP = [w for w in SWEEP if w != "tracking.enabled=false"] + ["slurm.poll_s=1"]
# (a README line matching the pattern) -> the size words added to it; the first match wins
SIZES: list[tuple[str, list[str]]] = [
    (
        r"^dist-forget data prepare",
        ["--domains", "english", "code", "--vocab-size", "512", "--seq-len", "64"],
    ),
    (r"^dist-forget data preview", ["--target-tokens", "4096"]),
    (r"^dist-forget (pretrain|finetune) ", RUN),
    (r"^dist-forget sweep .*--backend slurm", SLURM_SWEEP),
    (r"^dist-forget sweep ", SWEEP),
    (r"^dist-forget (fit|study report) ", ["--bootstrap", "10"]),
    (r"launchers/(deepspeed\.sh|torchrun\.sh|slurm\.sbatch) finetune ", RUN),
]
PATHS = {"step-00000100": "step-00000004"}  # the convert lines' checkpoint: the last step of a 4-step run
NOT_RUN = {
    "HOSTFILE=launchers/hostfile.example": "starts node-a and node-b over ssh (pdsh); CI has neither",
    "NNODES=2 NPROC=8": "8 ranks per node on 2 cores; its c10d rendezvous is what the NPROC=2 torchrun line "
                        "runs (and tests/integration/test_launchers.py)",
}  # fmt: skip


@dataclass(frozen=True)
class Line:
    text: str  # as in README.md, continuations joined, without its comment
    words: list[str]  # to run: optional [parts] kept without their brackets, sizes added


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)


def _lines(block: str) -> Iterator[str]:
    for line in block.replace("\\\n", " ").splitlines():
        line = " ".join(shlex.split(line, comments=True))
        if line:
            yield line


def _with_sizes(text: str) -> Line:
    words = [w.strip("[]") for w in shlex.split(text)]
    for old, new in PATHS.items():
        words = [w.replace(old, new) for w in words]
    extra = next((sizes for pattern, sizes in SIZES if re.search(pattern, text)), [])
    # right after `--config C`: the CLI takes key=value words in one run, before or after the flags
    at = words.index("--config") + 2 if "--config" in words else len(words)
    return Line(text, words[:at] + extra + words[at:])


def pipeline_lines() -> list[Line]:
    block = next(b for b in _blocks() if "dist-forget data prepare" in b)
    return [_with_sizes(t) for t in _lines(block) if t.startswith("dist-forget ")]


def slurm_sweep_lines() -> list[Line]:
    block = next(b for b in _blocks() if "--backend slurm" in b)
    return [_with_sizes(t) for t in _lines(block) if t.startswith("dist-forget ")]


def launcher_lines() -> list[Line]:
    block = next(b for b in _blocks() if "launchers/" in b)
    return [_with_sizes(t) for t in _lines(block)]


def _env(**extra: str) -> dict[str, str]:
    """A new shell's environment, and one thread per process (2 cores shared with the other xdist worker)."""
    return new_shell_env(OMP_NUM_THREADS="1", **extra)


def _split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """The leading VAR=value words of a shell line (its environment) and the command after them."""
    n = next(i for i, w in enumerate(words) if not re.fullmatch(r"[A-Z_]+=.*", w))
    return dict(w.split("=", 1) for w in words[:n]), words[n:]


def _run(
    line: Line, scratch: Path, ok: tuple[int, ...] = (0,), **env: str
) -> subprocess.CompletedProcess[str]:
    # a hang guard, as long as make test's per-test --timeout: the sweep line shares 2 cores with the other
    # xdist worker, and takes longer than alone
    res = subprocess.run(
        in_new_shell(line.words), cwd=scratch, env=_env(**env), capture_output=True, text=True, timeout=900
    )
    assert res.returncode in ok, (
        f"README line failed (exit {res.returncode}): {line.text}\nran: "
        f"{shlex.join(line.words)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    )
    return res


def _seed_corpora(work: Path) -> None:
    """tests/data's samples as the english and code corpora `data prepare` would have fetched."""
    for name in ("english", "code"):
        corpus = work / "data" / "corpora" / name
        corpus.mkdir(parents=True)
        shutil.copyfile(DATA / f"{name}.jsonl", corpus / DOCUMENTS)
        n_docs = len((corpus / DOCUMENTS).read_text().splitlines())
        source = {"domain": name, "role": "pretrain" if name == "english" else "target", "licence": "see tests/data",
                  "packages": [], "documents": n_docs, "bytes": (corpus / DOCUMENTS).stat().st_size,
                  "sha256": file_sha256(corpus / DOCUMENTS)}  # fmt: skip
        (corpus / "source.json").write_text(json.dumps(source))


def _crashed_after_step_2(run: Path) -> None:
    """The finished 4-step run as a crash during its step 3 leaves it: the step-4 checkpoint never written,
    `latest` at step 2 (what the README's `--resume auto` line then continues; its settings must be the
    same: a resume refuses a changed run)."""
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    (run / "checkpoints" / "latest").write_text("step-00000002\n")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's pipeline block run in order in a fresh scratch folder (the launcher lines reuse its
    data and its pretrained model, as a reader of the README would)."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("configs", "launchers", "reports"):
        (root / name).symlink_to(ROOT / name)
    link_venv(root)
    _seed_corpora(root / "work")
    down = root / "mlflow-down"
    down.write_text("a file where the MLflow store's folder should be: the store cannot open")
    for line in pipeline_lines():
        if "track sync" in line.text:
            down.unlink()
            down.mkdir()  # MLflow is back
        if "--resume auto" in line.text:
            _crashed_after_step_2(root / "work" / "runs" / "finetune-tiny")
            _run(line, root, MLFLOW_TRACKING_URI=f"sqlite:///{down}/mlflow.db")
        else:
            is_plan = line.words[:2] == ["dist-forget", "plan"]
            res = _run(line, root, ok=(0, 1, 2) if is_plan else (0,))
            # plan's exit 2 is only its documented refusal of a degenerate fit (4-step models give one)
            assert res.returncode != 2 or "cannot answer" in res.stderr, res.stderr[-2000:]
    return root


def test_the_pipeline_block_runs_in_order(scratch: Path) -> None:
    lines = [ln.text.split(" --")[0] for ln in pipeline_lines()]
    assert lines[:3] == ["dist-forget data prepare", "dist-forget data preview", "dist-forget pretrain"]
    work = scratch / "work"
    # what each step left for the next (the README's story, not the details: other tests have those)
    assert json.loads((work / "data/shards/code/manifest.json").read_text())["seq_len"] == 64
    tiny = work / "runs" / "finetune-tiny"
    train_steps = [
        json.loads(ln)["step"]
        for ln in (tiny / "metrics.jsonl").read_text().splitlines()
        if json.loads(ln)["kind"] == "train"
    ]
    assert train_steps == [1, 2, 3, 4]  # the --resume auto line continued the run from step 2 ...
    assert (tiny / "checkpoints" / "step-00000004").is_dir()  # ... to its end
    assert json.loads((tiny / "summary.json").read_text())["anchor_decay"] == 0.1
    assert list(tiny.glob("mlflow_fallback.jsonl.synced*")), "track sync uploaded nothing"
    assert (work / "runs" / "zero2" / "checkpoints" / "step-00000004").is_dir()
    assert len((work / "sweeps/demo/runs.csv").read_text().splitlines()) == 1 + 3 * 5  # 3 sizes x 5 points
    assert json.loads((work / "fit" / "fit.json").read_text())["fits"]
    assert (work / "study" / "REPORT.md").is_file()
    assert (scratch / "hf" / "config.json").is_file() and (scratch / "hf" / "optimizer.pt").is_file()
    assert (work / "zero2-x4").is_dir() and (scratch / "meg" / "megatron.json").is_file()
    # Megatron-LM -> finetune -> Megatron-LM: megatron-core's format in, our run, its format out
    assert (work / "runs" / "from-mcore" / "summary.json").is_file()
    assert (scratch / "mcore-ft" / "release" / "metadata.json").is_file()


def _launch(scratch: Path, i: int, line: Line) -> Path:
    """Run launcher line `i` (`VAR=... launchers/X ...`) into work/launch-<i>; return that folder."""
    assign, words = _split_env(line.words)
    assert words[0].startswith("launchers/"), line.text
    port = str(free_port())
    launched = Line(line.text, [*words, f"out_dir=work/launch-{i}"])
    _run(launched, scratch, MASTER_PORT=port, RDZV_ENDPOINT=f"127.0.0.1:{port}", **assign)
    return scratch / "work" / f"launch-{i}"


def test_single_node_launcher_lines_run(scratch: Path) -> None:
    pretrained = json.loads((scratch / "work" / "runs" / "pretrain-tiny" / "summary.json").read_text())
    ran = 0
    for i, line in enumerate(launcher_lines()):
        if not line.text.startswith("NPROC="):  # the other lines: the tests below, or NOT_RUN
            continue
        assign, _ = _split_env(line.words)
        summary = json.loads((_launch(scratch, i, line) / "summary.json").read_text())
        assert (
            summary["model_params"] == pretrained["model_params"]
        )  # finetuned the README's pretrained model
        report = json.loads((scratch / "work" / f"launch-{i}" / "report.json").read_text())
        assert (report["world_size"], report["engine"]) == (int(assign["NPROC"]), "deepspeed")
        ran += 1
    assert ran == 2  # deepspeed.sh and torchrun.sh


def test_the_per_node_launcher_line_runs_as_two_nodes_on_loopback(scratch: Path) -> None:
    """`HOSTFILE=hosts NODE_RANK=0 MASTER_ADDR=10.0.0.1 ...` on two "nodes" that are both this machine: the
    hostfile names 127.0.0.1 and localhost (1 slot each), MASTER_ADDR is 127.0.0.1, NODE_RANK 0 and 1."""
    (line,) = [ln for ln in launcher_lines() if "NODE_RANK=" in ln.text]
    assign, words = _split_env(line.words)
    (scratch / assign["HOSTFILE"]).write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")
    loopback = {**assign, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    run_together([(in_new_shell([*words, "out_dir=work/launch-nodes"]), _env(**{**loopback, "NODE_RANK": str(rank)}))
                  for rank in (0, 1)], cwd=scratch)  # fmt: skip
    report = json.loads((scratch / "work" / "launch-nodes" / "report.json").read_text())
    assert (report["world_size"], report["engine"]) == (2, "deepspeed")


@pytest.mark.slurm
def test_the_sbatch_line_runs_on_two_slurm_nodes_like_torchrun(scratch: Path, slurm) -> None:  # noqa: ANN001
    """`sbatch --nodes=2 launchers/slurm.sbatch finetune ...`: one srun task per SLURM node starts torchrun,
    2 ranks in one gloo group; its summary equals the README's 2-rank torchrun line's (same config)."""
    lines = launcher_lines()
    (line,) = [ln for ln in lines if ln.text.startswith("sbatch ")]
    i, local = next(
        (i, ln) for i, ln in enumerate(lines) if ln.text.startswith("NPROC=2 launchers/torchrun.sh")
    )
    reference = scratch / "work" / f"launch-{i}"
    if not (reference / "summary.json").exists():  # (this test alone was selected)
        _launch(scratch, i, local)
    out, log = scratch / "work" / "launch-slurm", scratch / "work" / "launch-slurm.out"
    words = [line.words[0], "--wait", f"--output={log}", *line.words[1:], f"out_dir={out}"]
    env = {"SLURM_CONF": str(slurm.conf), "RDZV_PORT": str(free_port())}
    res = subprocess.run(in_new_shell(words), cwd=scratch, env=_env(**env), capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert res.returncode == 0, (
        f"{line.text}\n{res.stderr}\n{log.read_text()[-3000:] if log.exists() else ''}"
    )
    assert "slurm.sbatch: 2 node(s) (n[1-2]), 1 process(es) each" in log.read_text()
    report = json.loads((out / "report.json").read_text())
    assert (report["world_size"], report["engine"]) == (2, "deepspeed")
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    for key in ("ft_loss", "pt_loss", "pt_loss_base"):
        assert abs(ours[key] - theirs[key]) <= 1e-5, (key, ours[key], theirs[key])
    assert ours["steps"] == theirs["steps"] == 4


@pytest.mark.slurm
def test_the_slurm_sweep_line_resumes_the_pipelines_sweep(scratch: Path, slurm) -> None:  # noqa: ANN001
    """After the pipeline's local sweep every run is finished: the SLURM line submits only collect + fit,
    which logs through the sweep's --tracking-server into the sweep's own store."""
    (line,) = slurm_sweep_lines()
    res = _run(line, scratch, SLURM_CONF=str(slurm.conf))
    assert "pretrain: all 3 runs finished before; nothing to submit" in res.stdout, res.stdout
    assert "finetune: all 15 runs finished before; nothing to submit" in res.stdout
    assert re.search(r"^collect \+ fit: job \d+ COMPLETED", res.stdout, flags=re.M), res.stdout
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{scratch / 'work' / 'sweeps' / 'demo' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "tags.stage = 'sweep'")
    assert parent.info.status == "FINISHED"  # by the collect job, through the server
    logged = (
        scratch / "work" / "sweeps" / "demo" / "mlartifacts"
    )  # the server stored them in the sweep's folder
    assert {p.name for p in logged.glob(f"**/{parent.info.run_id}/artifacts/**/*")} >= {
        "runs.csv",
        "fit.json",
    }


def test_launcher_lines_not_run_say_why() -> None:
    for line in launcher_lines():
        runs = line.text.startswith(("NPROC=", "sbatch ")) or "NODE_RANK=" in line.text
        reason = next((why for start, why in NOT_RUN.items() if line.text.startswith(start)), None)
        assert runs or reason, f"README launcher line neither run nor explained in NOT_RUN: {line.text}"
        script = next(w for w in line.words if w.startswith("launchers/"))
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0


def url_block() -> list[Line]:
    block = next(b for b in _blocks() if "http.server" in b)
    return [_with_sizes(t) for t in _lines(block)]


def test_the_http_shards_block_runs_as_two_nodes_on_loopback(scratch: Path) -> None:
    """The README's shards-over-HTTP block: its static server publishes work/data/shards, the preview reads
    the URLs, and the launch line runs on two "nodes" (this machine twice) that have the shards only
    through the server."""
    server_line, *lines = url_block()
    assert server_line.words[:3] == ["python", "-m", "http.server"] and server_line.words[-1] == "&"
    port = str(free_port())
    subst = {"8000": port, "0.0.0.0": "127.0.0.1"}
    log = scratch / "http-server.log"
    with open(log, "w") as fh:
        server = subprocess.Popen(in_new_shell([subst.get(w, w) for w in server_line.words[:-1]]), cwd=scratch,
                                  env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_for_port(int(port))
        for line in lines:
            words = [w.replace("10.0.0.1:8000", f"127.0.0.1:{port}") for w in line.words]
            if words[0] == "dist-forget":
                res = _run(Line(line.text, words), scratch)
                assert "fingerprint" in res.stdout
                continue
            assign, cmd = _split_env(words)
            (scratch / assign["HOSTFILE"]).write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")
            env = {**assign, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
            cmd = [*cmd, "out_dir=work/launch-url", "data.cache_dir=work/shard-cache"]
            run_together([(in_new_shell(cmd), _env(**{**env, "NODE_RANK": str(rank)})) for rank in (0, 1)],
                         cwd=scratch)  # fmt: skip
    finally:
        stop(server)
    report = json.loads((scratch / "work" / "launch-url" / "report.json").read_text())
    assert (report["world_size"], report["engine"]) == (2, "deepspeed")
    served = (
        log.read_text()
    )  # the target's train shards, and the pretraining val shards (4 steps inject none)
    assert "GET /code/train-" in served and "GET /english/val-" in served, served


def _wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"the README's http.server line did not listen on port {port}")


def _blocks_under(heading: str) -> list[str]:
    """The bash blocks of one `## ` section of README.md."""
    text = README.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def quickstart_lines() -> list[str]:
    """The Quickstart's command lines after its set-up block (comments dropped, continuations joined)."""
    return [
        ln for b in _blocks_under("Quickstart") if "source .venv/bin/activate" not in b for ln in _lines(b)
    ]


# Quickstart lines that are not run here, and why (their `--help` runs in a new shell instead).
QUICKSTART_NOT_RUN = {
    "dist-forget demo": "make demo, about 10 min; its sweep is the pipeline's sweep line at test sizes, "
    "its end screen's commands run in tests/integration/test_end_screens.py",
}


def test_the_setup_block_is_make_install_then_activate() -> None:
    assert setup_lines() == ["make install", "source .venv/bin/activate"]
    assert re.search(r"^install:", (ROOT / "Makefile").read_text(), flags=re.M)
    assert re.search(r"^VENV\s*:=\s*\.venv$", (ROOT / "Makefile").read_text(), flags=re.M)


def test_without_the_setup_the_cli_is_not_on_path(scratch: Path) -> None:
    """The reason the README has its set-up line: a new shell does not find the commands without it."""
    res = subprocess.run(["bash", "-lc", "command -v dist-forget || command -v mlflow || echo none"],
                         cwd=scratch, env=_env(), capture_output=True, text=True)  # fmt: skip
    assert res.stdout.strip() == "none", res.stdout


def test_the_quickstart_lines_run_in_a_new_shell(scratch: Path) -> None:
    lines = quickstart_lines()
    pipeline = {ln.text for ln in pipeline_lines()}
    ran = set()
    for text in lines:
        if "mlflow ui" in text:  # test_the_mlflow_ui_lines_serve
            continue
        words = shlex.split(text)
        if text in pipeline:  # ran in the pipeline block, at test sizes
            ran.add(text)
            continue
        if text in QUICKSTART_NOT_RUN:
            res = _run(Line(text, [*words, "--help"]), scratch)
            assert "usage: dist-forget" in res.stdout
            ran.add(text)
            continue
        res = _run(Line(text, words), scratch)
        ran.add(text)
        if words[:2] == ["dist-forget", "plan"]:  # the README's planner example answers, as the README says
            assert re.search(r"smallest p with forgetting <= [\d.]+ nats/token: [\d.]+ \(", res.stdout), (
                res.stdout
            )
            quoted = re.search(r"It answers p = ([\d.]+ %)", README.read_text()).group(1)
            assert f"({quoted})" in res.stdout, (quoted, res.stdout)
        if words[:3] == ["dist-forget", "config", "show"]:
            assert "inject_fraction: 0.01" in res.stdout, res.stdout
        if words[1:] == ["--help"]:
            assert "plan " in res.stdout and "finetune " in res.stdout
    assert ran == {t for t in lines if "mlflow ui" not in t}
    assert any(t.startswith("dist-forget plan --fit reports/") for t in ran)


def mlflow_ui_lines() -> list[str]:
    return [ln for b in _blocks_under("Quickstart") + _blocks_under("Tracking (MLflow)") for ln in _lines(b)
            if "mlflow ui" in ln]  # fmt: skip


def test_the_mlflow_ui_lines_serve(scratch: Path) -> None:
    """The Quickstart's (the demo sweep's store) and the Tracking section's (the pipeline runs' store)."""
    lines = mlflow_ui_lines()
    assert len(lines) == 2
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(lines)) as pool:  # both at once: an MLflow server takes a while to start
        answers = list(pool.map(lambda text: serve_until_healthy(text, scratch, _env()), lines))
    assert answers == ["OK"] * len(lines)
    assert (scratch / "work" / "runs" / "mlflow.db").is_file()  # the store the pipeline's runs wrote
