"""`dist-forget data prepare-model`: a model folder's tokenizer re-shards the corpora in one command (toy size:
a tiny HF folder with its own tokenizer, the two sample corpora of tests/data; the real SmolLM2 is
test_smollm2.py's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dist_forget import cli
from dist_forget.data.manifest import read_manifest
from dist_forget.data.tokenizer import file_sha256

DATA = Path(__file__).parents[1] / "data"


def _corpora(root: Path) -> Path:
    """DATA/corpora/<domain> as `make data` leaves it (documents + source.json): nothing is fetched."""
    for name in ("english", "code"):
        folder = root / "corpora" / name
        folder.mkdir(parents=True)
        docs = shutil.copy(DATA / f"{name}.jsonl", folder / "documents.jsonl")
        source = {
            "domain": name,
            "documents": 1,
            "bytes": Path(docs).stat().st_size,
            "sha256": file_sha256(docs),
        }
        (folder / "source.json").write_text(json.dumps(source))
    return root


def test_prepare_model_shards_each_domain_with_the_models_tokenizer(tiny_data, base_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    shutil.copy(tiny_data.tokenizer_dir / "tokenizer.json", model / "tokenizer.json")
    data, out = _corpora(tmp_path / "data"), tmp_path / "data-model"
    argv = ["data", "prepare-model", "--model", str(model), "--data", str(data), "--out", str(out),
            "--domains", "english", "code", "--seq-len", "32", "--max-chars", "20000"]  # fmt: skip
    assert cli.main(argv) == 0
    sha = file_sha256(model / "tokenizer.json")
    for name in ("english", "code"):
        m = read_manifest(out / "shards" / name)
        assert (m.domain, m.seq_len, m.tokenizer_sha256) == (name, 32, sha)
        assert m.splits["val"].sequences > 0 and m.source["max_chars"] == 20000
    first = (out / "shards" / "code" / "manifest.json").read_text()
    capsys.readouterr()
    assert cli.main(argv) == 0  # a rerun keeps what is there
    assert capsys.readouterr().out.count(": cached") == 4  # two corpora, two shard folders
    assert (out / "shards" / "code" / "manifest.json").read_text() == first


def test_prepare_model_refuses_a_folder_without_its_tokenizer(base_model, tmp_path, capsys):
    argv = [
        "data",
        "prepare-model",
        "--model",
        str(base_model),
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path),
    ]
    assert cli.main(argv) == 2
    assert "has no tokenizer.json" in capsys.readouterr().err
