"""Shard folders at a URL (`http(s)://`, `s3://`, `gs://`, anything fsspec opens), mirrored into a local cache.

A URL prefix holds what a local shard folder holds: `manifest.json`, the tars and `tokenizer.json`.
`RemoteFolder(url, cache_dir)` fetches the manifest when it is opened; its sha256 names the cache folder
(`<cache_dir>/<sha256 of manifest.json>/`), so the same shards published at two URLs share one copy and
a republished, changed shard set never mixes with the old one. Every other file is fetched on first use
(`fetch(name, sha256)`), which is what lets each rank download only the shards its slice of the stream
reads. A fetch:

- takes a per-file lock (`flock` on `.locks/<name>.lock` in the cache folder), so ranks of one node never
  download one file twice: the second waits, then finds the file published;
- downloads into a temp file beside the target, checks it against the manifest's sha256 and publishes
  it with `os.replace`: a crash, a lost connection or a corrupt copy never leaves a file under its real
  name (a `.part` left by a killed process is removed by the next fetch of that file);
- retries transient failures (connection refused or lost mid-body) `tries` times with exponential
  backoff, then stops with one line naming the URL; a sha256 mismatch gets one fresh download, then an
  error naming the shard; a missing file (404) or a refusal (403) is reported at once;
- reports a cache that is read-only or full in one line naming `data.cache_dir`.

URLs are shown redacted (`dist_forget.redact`): userinfo and secret query values never reach a message.
fsspec and its backends are imported only when a URL is used; plain paths and `file://` are read in place.
Credentials for `s3://` / `gs://` come from the backends' usual sources (AWS_* variables, ~/.aws, gcloud).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from dist_forget.data.manifest import MANIFEST, Manifest, read_manifest
from dist_forget.data.tokenizer import file_sha256
from dist_forget.errors import UserError
from dist_forget.io import atomic_path, write_bytes_atomic
from dist_forget.redact import redact_uri, remember, scrub

DEFAULT_CACHE_DIR = "~/.cache/dist-forget/shards"
_CACHE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
T = TypeVar("T")
_BACKEND = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def scheme_of(location: str | Path) -> str:
    text = str(location)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_remote(location: str | Path) -> bool:
    """A URL whose files are fetched into the cache (not a plain path, not `file://`)."""
    return scheme_of(location) not in ("", "file")


def local_path(location: str | Path) -> Path:
    """A plain path, or the path of a `file://` URL."""
    text = str(location)
    if scheme_of(text) == "file":
        return Path(unquote(urlsplit(text).path))
    return Path(text)


def location_name(location: str | Path) -> str:
    """The last folder name of a path or URL (`http://h/shards/code/` → `code`): a run's default domain."""
    if is_remote(location):
        parts = urlsplit(str(location))
        return Path(parts.path.rstrip("/")).name or parts.hostname or ""  # s3://bucket: the bucket
    return local_path(location).name


def open_manifest(location: str | Path, cache_dir: str | Path | None = None) -> Manifest:
    """The checked manifest of a shard folder: a plain path or `file://` URL read in place, or a URL whose
    manifest.json is fetched now and whose other files are fetched into `cache_dir` on first use
    (`Manifest.local_file`)."""
    if not is_remote(location):
        return read_manifest(local_path(location))
    remote = RemoteFolder(str(location), cache_dir)
    manifest = read_manifest(remote.open(), origin=remote.shown)
    manifest.fetch = remote.fetch
    return manifest


def tokenizer_folder(manifest: Manifest) -> Path | None:
    """The local folder holding the shards' tokenizer.json (for a URL fetched into the cache and checked
    against the manifest's tokenizer sha256), or None when a URL's shard folder has none."""
    try:
        return manifest.local_file("tokenizer.json", manifest.tokenizer_sha256).parent
    except RemoteMissing:
        return None


def _join(url: str, name: str) -> str:
    """`name` inside the folder `url`, keeping its query (a signed URL's token applies to every file)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


class RemoteFolder:
    """A shard folder at `url`, with the files fetched so far in `cache_dir/<manifest sha256>/`."""

    def __init__(
        self,
        url: str,
        cache_dir: str | Path | None = None,
        tries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 60.0,
    ):
        parts = urlsplit(url)
        if parts.path.rstrip("/").endswith("/" + MANIFEST):  # the manifest's own URL names its folder
            url = urlunsplit(parts._replace(path=parts.path.rstrip("/")[: -len(MANIFEST) - 1]))
        remember(url)  # its secrets are masked in any text we show
        self.url = url
        self.shown = redact_uri(url)
        self.scheme = scheme_of(url)
        self.cache_root = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
        self.tries, self.backoff_s, self.timeout_s = max(1, tries), backoff_s, timeout_s
        self.folder: Path | None = None  # set by open()

    # ------------------------------------------------------------------------------------- fsspec
    def _fs(self, file_url: str) -> tuple[Any, str]:
        try:
            import fsspec
        except ImportError:
            raise UserError(
                f"{self.shown}: reading shards from a URL needs fsspec; `pip install fsspec`"
            ) from None
        options: dict[str, Any] = {}
        if self.scheme in ("http", "https"):
            import aiohttp

            # no total limit (a big shard may take long), but a stalled socket is an error, not a hang
            options["client_kwargs"] = {
                "timeout": aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s
                )
            }
        try:
            return fsspec.core.url_to_fs(file_url, **options)
        except ImportError:
            pkg = _BACKEND.get(self.scheme, f"the fsspec backend for {self.scheme}://")
            raise UserError(f"{self.shown}: {self.scheme}:// URLs need {pkg}; `pip install {pkg}`") from None
        except ValueError as exc:  # fsspec: unknown protocol
            raise UserError(
                f"{self.shown}: cannot open {self.scheme}:// URLs ({scrub(str(exc))}); use http(s)://, "
                "s3://, gs:// or a local path"
            ) from None

    def _retrying(self, name: str, action: Callable[[Any, str], T]) -> T:
        """`action(fs, path)` on the remote file `name`, retried with backoff on a flaky network."""
        file_url = _join(self.url, name)
        shown = redact_uri(file_url)
        last = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                fs, path = self._fs(file_url)
                return action(fs, path)
            except UserError:
                raise
            except FileNotFoundError:
                raise RemoteMissing(
                    f"{shown} does not exist; publish the whole shard folder there (manifest.json, "
                    "every tar, tokenizer.json) or fix data.target / data.pretrain"
                ) from None
            except OSError as exc:
                if exc.errno in _CACHE_FULL:  # writing our copy, not reading theirs
                    raise self._cache_error(exc, f"while fetching {name}") from None
                if isinstance(exc, PermissionError):
                    raise UserError(
                        f"{shown}: access denied ({scrub(str(exc))}); check the credentials for it"
                    ) from None
                last = f"{type(exc).__name__}: {scrub(str(exc))}"
            except Exception as exc:  # noqa: BLE001 - aiohttp/botocore errors of a flaky network
                last = f"{type(exc).__name__}: {scrub(str(exc))}"
        raise UserError(
            f"cannot fetch {shown} after {self.tries} tries ({last}); check that the server is up and "
            "the URL is right"
        )

    # --------------------------------------------------------------------------------------- cache
    def _cache_error(self, exc: OSError, what: str) -> UserError:
        if exc.errno in _CACHE_FULL:
            return UserError(
                f"data.cache_dir {self.cache_root} is full ({exc.strerror}) {what} from {self.shown}; "
                "free space there or set data.cache_dir to a folder on a bigger disk"
            )
        return UserError(
            f"data.cache_dir {self.cache_root} is not writable ({exc.strerror}) {what} from {self.shown}; "
            "set data.cache_dir to a writable folder"
        )

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        assert self.folder is not None
        locks = self.folder / ".locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
            fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._cache_error(exc, f"while fetching {name}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another process of this node fetches `name`
            yield
        finally:
            os.close(fd)  # releases the lock

    def open(self) -> Path:
        """Fetch manifest.json now (the one request a reachable server must answer at start) and return
        the cache folder it names, with the manifest in it."""
        data = self._retrying(MANIFEST, lambda fs, path: fs.cat_file(path))
        self.folder = self.cache_root / hashlib.sha256(data).hexdigest()
        manifest = self.folder / MANIFEST
        if not (manifest.is_file() and manifest.read_bytes() == data):
            try:
                write_bytes_atomic(manifest, data)
            except OSError as exc:
                raise self._cache_error(exc, f"while storing {MANIFEST}") from None
        return self.folder

    def fetch(self, name: str, sha256: str) -> Path:
        """The cached copy of `name`, downloaded and checked against `sha256` on first use."""
        folder = self.folder or self.open()
        dest = folder / name
        if dest.is_file():  # published earlier (by us or another rank); a read-only cache is fine here
            return dest
        with self._lock(name):
            if dest.is_file():  # another rank of this node fetched it while we waited for the lock
                return dest
            for stale in folder.glob(f".{name}.*.tmp"):  # left by a killed fetch; we hold its lock
                stale.unlink(missing_ok=True)
            digest = ""
            for _ in range(2):  # a corrupt copy gets one fresh download
                try:
                    with atomic_path(dest) as tmp:  # published by rename only if the block completes
                        self._retrying(name, lambda fs, path, tmp=tmp: fs.get_file(path, str(tmp)))
                        digest = file_sha256(tmp)
                        if digest != sha256:
                            raise _Corrupt
                    return dest
                except _Corrupt:
                    continue
                except OSError as exc:  # our side: the temp file, its fsync or the rename
                    raise self._cache_error(exc, f"while fetching {name}") from None
        raise UserError(
            f"shard {redact_uri(_join(self.url, name))} has sha256 {digest[:12]}... on two downloads, "
            f"its manifest says {sha256[:12]}...: the copy at the URL is corrupt or was replaced; "
            "republish the shard folder (manifest.json with its tars)"
        )


class RemoteMissing(UserError):
    """The URL answered that the file does not exist (HTTP 404, no such key)."""


class _Corrupt(Exception):
    """A download whose sha256 differs from the manifest's."""
