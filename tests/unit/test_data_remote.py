"""Shards read from a URL against real servers on 127.0.0.1: a threaded `http.server` (with faults injected
on purpose) and moto's S3 server through s3fs. The stream from a URL is the stream from a local copy, bit
for bit and across a resume; each rank fetches only the shards its slice reads, and ranks sharing a cache
fetch each file once; every fault ends in one line naming the URL (credentials redacted) and leaves no
file in the cache under a shard's name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_forget import cli
from dist_forget.data.documents import read_documents
from dist_forget.data.manifest import read_manifest
from dist_forget.data.mixture import MixedStream, MixtureConfig, validation_batches
from dist_forget.data.remote import RemoteFolder, location_name, open_manifest, tokenizer_folder
from dist_forget.data.shards import ShardConfig, ShardSet, write_shards
from dist_forget.errors import UserError
from dist_forget.net import StaticServer, _QuietFiles, free_port
from tests.conftest import tmpfs
from tests.distributed.conftest import run_ranks

DATA = Path(__file__).parents[1] / "data"
FAST = {"tries": 3, "backoff_s": 0.01}  # retries without the default's seconds of backoff


class _Faulty(_QuietFiles):
    """Static files; a request whose path has faults queued in `server.faults` gets the next one:
    "cut" sends the headers and half the body, then closes; "flip" sends the file with one byte changed;
    "hold" waits `server.hold_s` seconds (or until `server.release` is set) before answering."""

    server: FaultyServer

    def do_GET(self) -> None:
        with self.server.lock:
            queue = self.server.faults.get(self.path) or []
            fault = queue.pop(0) if queue else None
        if fault == "hold":
            self.server.release.wait(self.server.hold_s)
            fault = None
        if fault is None:
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        if fault == "flip":
            data = data[:600] + bytes([data[600] ^ 0xFF]) + data[601:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if fault == "cut" else data)
        self.close_connection = True


class FaultyServer(StaticServer):
    def __init__(self, root: Path, hold_s: float = 30.0):
        self.faults: dict[str, list[str]] = {}
        self.release = threading.Event()
        self.hold_s = hold_s
        super().__init__(root, _Faulty)


def _gets(server: StaticServer, suffix: str = ".tar") -> list[str]:
    return [path for method, path, _ in server.requests if method == "GET" and path.endswith(suffix)]


def _cache_files(cache: Path) -> list[str]:
    """Everything in the cache but the manifests and lock files: the shards published, and any leftover."""
    return sorted(
        str(p.relative_to(cache))
        for p in cache.rglob("*")
        if p.is_file() and p.name != "manifest.json" and ".locks" not in p.parts
    )


def _cfg(target: str, pretrain: str, cache: Path | None = None, p: float = 0.25) -> MixtureConfig:
    return MixtureConfig(target=target, pretrain=pretrain, inject_fraction=p, seed=3, cache_dir=str(cache))


def _batches(stream: MixedStream, steps: int, b: int = 4) -> torch.Tensor:
    return torch.cat([stream.next_batch(b).input_ids for _ in range(steps)])


# ----------------------------------------------------------------------------------- the same stream


def test_stream_from_http_equals_the_local_copy_and_resumes_exactly(tiny_data, tmp_path):
    shards = tiny_data.code.parent
    local = [MixedStream(_cfg(str(tiny_data.code), str(tiny_data.english)), r, 2) for r in (0, 1)]
    with StaticServer(shards) as server:
        url = _cfg(f"{server.url}/code", f"{server.url}/english/", tmp_path / "cache")
        remote = [MixedStream(url, r, 2) for r in (0, 1)]
        for r in (0, 1):
            assert remote[r].fingerprint == local[r].fingerprint  # a local run's checkpoint resumes here
            assert torch.equal(_batches(remote[r], 6), _batches(local[r], 6))
        state = remote[0].state_dict()
        resumed = MixedStream(url, 0, 2)  # a new process: the cache is warm, the server still asked
        resumed.load_state_dict(state)
        assert torch.equal(_batches(resumed, 4), _batches(local[0], 4))
        for folder, name in (
            (f"{server.url}/code", tiny_data.code),
            (f"{server.url}/english", tiny_data.english),
        ):
            got = list(validation_batches(folder, 4, 10, rank=1, world_size=2, cache_dir=tmp_path / "cache"))
            want = list(validation_batches(name, 4, 10, rank=1, world_size=2))
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        manifest = open_manifest(f"{server.url}/code", tmp_path / "cache")
        tok = tokenizer_folder(manifest)  # what an HF export copies: fetched and checked by its sha256
        assert (
            tok is not None
            and (tok / "tokenizer.json").read_bytes() == (tiny_data.code / "tokenizer.json").read_bytes()
        )
    tars = _gets(server)
    assert len(tars) == len(set(tars)), "a shard was downloaded twice into one cache"
    assert location_name(f"{server.url}/code/") == "code"


def test_plain_paths_and_file_urls_are_read_in_place(tiny_data, tmp_path):
    a = MixedStream(_cfg(f"file://{tiny_data.code}", str(tiny_data.english), tmp_path / "cache"))
    b = MixedStream(_cfg(str(tiny_data.code), str(tiny_data.english)))
    assert torch.equal(_batches(a, 3), _batches(b, 3))
    assert a.target_manifest.directory == tiny_data.code and not (tmp_path / "cache").exists()


def test_preview_of_a_url_is_the_preview_of_the_local_copy(tiny_data, tmp_path, capsys):
    args = ["--global-batch", "8", "--steps", "20", "--inject-fraction", "0.25", "--json"]
    with StaticServer(tiny_data.code.parent) as server:
        url = ["--target", f"{server.url}/code", "--pretrain", f"{server.url}/english"]
        assert cli.main(["data", "preview", *url, "--cache-dir", str(tmp_path), *args]) == 0
    remote = json.loads(capsys.readouterr().out)
    local = ["--target", str(tiny_data.code), "--pretrain", str(tiny_data.english)]
    assert cli.main(["data", "preview", *local, *args]) == 0
    assert remote == json.loads(capsys.readouterr().out)
    assert _gets(server) == []  # a preview reads manifests only


# ------------------------------------------------------------------- each rank fetches its own shards


@pytest.fixture(scope="module")
def small_shards(tiny_data, tmp_path_factory) -> Path:
    """The tiny corpora cut into shards of 16 sequences (~140 shards), so that a few steps of one rank
    touch a small part of them."""
    root = tmp_path_factory.mktemp("small_shards")
    cfg = ShardConfig(seq_len=tiny_data.seq_len, val_fraction=0.1, rows_per_member=8, sequences_per_shard=16)
    for name in ("code", "english"):
        write_shards(read_documents(DATA / f"{name}.jsonl"), tiny_data.tokenizer_dir, root / name, name, cfg)
    return root


WORKER = r"""
import os, sys
import numpy as np
from dist_forget.data.mixture import MixedStream, MixtureConfig, validation_batches
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
urls, cache, out = sys.argv[1].split(","), sys.argv[2].format(rank=rank), sys.argv[3]
url = urls[rank % len(urls)]
cfg = MixtureConfig(target=url + "/code", pretrain=url + "/english", inject_fraction=0.25, seed=3, cache_dir=cache)
stream = MixedStream(cfg, rank, world)
stream.verify()  # what the trainer calls first: it must fetch nothing
ids = [stream.next_batch(4).input_ids.numpy() for _ in range(3)]
val = [b.numpy() for b in validation_batches(stream.target_manifest, 4, 8, rank, world)]
np.save(f"{out}/rank{rank}.npy", np.concatenate(ids + val))
"""


def _touched(stream: MixedStream, rank: int, world: int) -> set[str]:
    """The tars rank `rank` reads in WORKER, from the stream's index maps on a local copy."""
    indices = np.concatenate(
        [stream.batch_at(c, 4).global_indices.numpy() for c in range(0, 3 * 4 * world, 4 * world)]
    )
    is_pre, ordinal = stream.sources(indices)
    files = set()
    for shards, rows in ((stream.target, stream.target_rows(ordinal[~is_pre])),
                         (stream.pretrain, stream.pretrain_rows(ordinal[is_pre]))):  # fmt: skip
        for k in np.unique(np.searchsorted(shards.bounds, rows, side="right") - 1):
            files.add(f"/{shards.manifest.domain}/{shards.info.shards[k].file}")
    val = ShardSet(stream.target_manifest, "val")
    for k in np.unique(np.searchsorted(val.bounds, np.arange(rank, 8, world), side="right") - 1):
        files.add(f"/code/{val.info.shards[k].file}")
    return files


@pytest.mark.slow
def test_each_rank_fetches_only_the_shards_its_slice_reads(small_shards, tmp_path):
    """Two real ranks on two "nodes" (a server and a cache each): each server's log holds exactly the tars
    its rank reads, once, and each rank's batches are those of a local copy."""
    local = [
        MixedStream(_cfg(str(small_shards / "code"), str(small_shards / "english")), r, 2) for r in (0, 1)
    ]
    want = [_touched(local[r], r, 2) for r in (0, 1)]
    n_tars = sum(
        len(read_manifest(small_shards / d).splits[s].shards)
        for d in ("code", "english")
        for s in ("train", "val")
    )
    assert want[0] != want[1] and all(len(w) < n_tars / 4 for w in want)  # the check below can fail
    with StaticServer(small_shards) as node0, StaticServer(small_shards) as node1:
        run_ranks(
            "-c", [WORKER, f"{node0.url},{node1.url}", str(tmp_path / "cache{rank}"), str(tmp_path)], world=2
        )
    for r, server in enumerate((node0, node1)):
        assert sorted(_gets(server)) == sorted(want[r])
        expect = torch.cat([_batches(local[r], 3), *validation_batches(small_shards / "code", 4, 8, r, 2)])
        assert np.array_equal(np.load(tmp_path / f"rank{r}.npy"), expect.numpy())


@pytest.mark.slow
def test_ranks_of_one_node_wait_for_each_other_instead_of_downloading_twice(tiny_data, tmp_path):
    """Two processes fetch the same shard at once while the server holds the first request: the second
    waits on the lock and finds the file published; the server sees one request."""
    info = read_manifest(tiny_data.code).splits["train"].shards[0]
    code = (
        "import os, sys, time; from pathlib import Path; from dist_forget.data.remote import RemoteFolder\n"
        "r = RemoteFolder(sys.argv[1], sys.argv[2]); r.open()\n"
        "Path(sys.argv[3], os.environ['RANK']).touch()\n"
        "while len(os.listdir(sys.argv[3])) < 2: time.sleep(0.01)\n"  # both opened: start together
        "print(r.fetch(sys.argv[4], sys.argv[5]))\n"
    )
    ready = tmp_path / "ready"
    ready.mkdir()
    # the first request is held for 1.5 s: ample time for the other process to ask too, were it not locked out
    with FaultyServer(tiny_data.code.parent, hold_s=1.5) as server:
        server.faults[f"/code/{info.file}"] = ["hold"]
        outs = run_ranks(
            "-c",
            [code, f"{server.url}/code", str(tmp_path / "cache"), str(ready), info.file, info.sha256],
            world=2,
        )
    assert _gets(server) == [f"/code/{info.file}"]
    paths = {out.strip().splitlines()[-1] for out in outs}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == (tiny_data.code / info.file).read_bytes()


# ---------------------------------------------------------------------------------------------- faults


def test_server_down_at_start_is_one_line_naming_the_url_without_credentials(tmp_path, capsys):
    port = free_port()  # nothing listens there
    url = f"http://reader:s3cr3t-pw@127.0.0.1:{port}/shards/code"
    code = cli.main(["data", "preview", "--target", url, "--global-batch", "4", "--steps", "1",
                     "--cache-dir", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"http://***@127.0.0.1:{port}/shards/code/manifest.json" in err and "after 4 tries" in err
    assert "s3cr3t" not in err and "Traceback" not in err
    assert _cache_files(tmp_path) == []


def test_connection_lost_mid_download_is_retried_then_reported(tiny_data, tmp_path):
    info = read_manifest(tiny_data.code).splits["train"].shards[1]
    path = f"/code/{info.file}"
    with FaultyServer(tiny_data.code.parent) as server:
        remote = RemoteFolder(f"{server.url}/code", tmp_path / "cache", **FAST)
        server.faults[path] = ["cut", "cut"]  # two lost connections, then a good answer
        got = remote.fetch(info.file, info.sha256)
        assert got.read_bytes() == (tiny_data.code / info.file).read_bytes()
        assert _gets(server) == [path] * 3

        other = read_manifest(tiny_data.code).splits["train"].shards[2]
        server.faults[f"/code/{other.file}"] = ["cut"] * 3  # every try cut
        with pytest.raises(UserError) as exc:
            remote.fetch(other.file, other.sha256)
    msg = str(exc.value)
    assert f"cannot fetch {server.url}/code/{other.file} after 3 tries" in msg and "\n" not in msg
    assert "ClientPayloadError" in msg  # the cause, named
    assert _cache_files(tmp_path / "cache") == [f"{remote.folder.name}/{info.file}"]  # nothing half-written


def test_corrupt_bytes_get_one_fresh_download_then_an_error_naming_the_shard(tiny_data, tmp_path):
    shards = read_manifest(tiny_data.code).splits["train"].shards
    with FaultyServer(tiny_data.code.parent) as server:
        remote = RemoteFolder(
            f"http://user:pw-9731@127.0.0.1:{server.server_address[1]}/code", tmp_path, **FAST
        )
        server.faults[f"/code/{shards[0].file}"] = ["flip"]  # one bad copy: the re-download is good
        assert (
            remote.fetch(shards[0].file, shards[0].sha256).read_bytes()
            == (tiny_data.code / shards[0].file).read_bytes()
        )
        server.faults[f"/code/{shards[1].file}"] = ["flip", "flip"]
        with pytest.raises(UserError) as exc:
            remote.fetch(shards[1].file, shards[1].sha256)
    assert _gets(server) == [f"/code/{shards[0].file}"] * 2 + [f"/code/{shards[1].file}"] * 2
    msg = str(exc.value)
    assert f"shard http://***@127.0.0.1:{server.server_address[1]}/code/{shards[1].file}" in msg
    assert "on two downloads" in msg and shards[1].sha256[:12] in msg and "pw-9731" not in msg
    assert _cache_files(tmp_path) == [f"{remote.folder.name}/{shards[0].file}"]


def test_a_missing_shard_is_reported_at_once(tiny_data, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(tiny_data.code, served / "code")
    info = read_manifest(served / "code").splits["train"].shards[0]
    (served / "code" / info.file).unlink()
    with FaultyServer(served) as server:
        stream = MixedStream(_cfg(f"{server.url}/code", f"{server.url}/code", tmp_path / "cache", p=0.0))
        with pytest.raises(UserError, match=rf"{server.url}/code/{info.file} does not exist; publish"):
            stream.target.gather(np.arange(3))
    assert _gets(server) == [f"/code/{info.file}"]  # a 404 is not retried


def test_a_fetch_killed_mid_download_leaves_no_shard_and_the_next_fetch_cleans_up(tiny_data, tmp_path):
    info = read_manifest(tiny_data.code).splits["train"].shards[0]
    code = (
        "import sys; from dist_forget.data.remote import RemoteFolder\n"
        "RemoteFolder(sys.argv[1], sys.argv[2]).fetch(sys.argv[3], sys.argv[4])\n"
    )
    with FaultyServer(tiny_data.code.parent) as server:
        server.faults[f"/code/{info.file}"] = ["hold"]
        proc = subprocess.Popen(
            [sys.executable, "-c", code, f"{server.url}/code", str(tmp_path), info.file, info.sha256],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        try:
            while not any(tmp_path.rglob(f".{info.file}.*.tmp")):  # its temp file exists: mid-fetch
                assert proc.poll() is None, "the fetch ended before it could be killed"
                time.sleep(0.02)
            proc.kill()
            proc.wait()
        finally:
            server.release.set()
        assert [f for f in _cache_files(tmp_path) if f.endswith(".tar")] == []  # no shard under its name
        remote = RemoteFolder(f"{server.url}/code", tmp_path, **FAST)
        remote.fetch(info.file, info.sha256)
    assert _cache_files(tmp_path) == [f"{remote.folder.name}/{info.file}"]  # the killed fetch's temp: gone


def test_a_full_or_read_only_cache_is_one_line_naming_cache_dir(tiny_data, tmp_path):
    info = read_manifest(tiny_data.code).splits["train"].shards[0]  # ~70 KB
    with StaticServer(tiny_data.code.parent) as server:
        with tmpfs(tmp_path / "small", "size=16k") as small:  # holds the manifest, not a shard
            remote = RemoteFolder(f"{server.url}/code", small, **FAST)
            with pytest.raises(UserError) as exc:
                remote.fetch(info.file, info.sha256)
            assert f"data.cache_dir {small} is full" in str(exc.value) and "\n" not in str(exc.value)
            assert _cache_files(small) == []
        with tmpfs(tmp_path / "ro", "size=1m") as ro:
            filled = RemoteFolder(f"{server.url}/code", ro, **FAST)
            filled.fetch(info.file, info.sha256)  # a cache filled earlier ...
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
            again = RemoteFolder(f"{server.url}/code", ro, **FAST)
            assert again.fetch(info.file, info.sha256) == filled.folder / info.file  # ... is read while ro
            other = read_manifest(tiny_data.code).splits["train"].shards[1]
            with pytest.raises(
                UserError, match=rf"data.cache_dir {ro} is not writable .* set data.cache_dir"
            ):
                again.fetch(other.file, other.sha256)
            with pytest.raises(UserError, match="is not writable"):
                RemoteFolder(f"{server.url}/english", ro, **FAST).open()


# ------------------------------------------------------------------------------------------ S3 (moto)


@pytest.fixture(scope="module")
def s3(tiny_data) -> Iterator[str]:
    """moto's S3 server on loopback holding the tiny shards at s3://shards/{code,english}/ (uploaded with
    s3fs, the way `aws s3 sync` publishes them); yields the bucket URL."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("shards")
        for name in ("code", "english"):
            fs.put(str(getattr(tiny_data, name)), f"shards/{name}", recursive=True)
        yield "s3://shards"
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_stream_from_s3_equals_the_local_copy(tiny_data, s3, tmp_path):
    remote = MixedStream(_cfg(f"{s3}/code", f"{s3}/english", tmp_path / "cache"), 1, 2)
    local = MixedStream(_cfg(str(tiny_data.code), str(tiny_data.english)), 1, 2)
    assert torch.equal(_batches(remote, 8), _batches(local, 8))
    assert remote.target_manifest.where == f"{s3}/code/manifest.json"
    with pytest.raises(UserError, match=rf"{s3}/nothing/manifest.json does not exist"):
        MixedStream(_cfg(f"{s3}/nothing", f"{s3}/english", tmp_path / "cache"))
