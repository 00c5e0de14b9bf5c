"""docs/library.md runs as written: its Python blocks, in order, as one script in a fresh folder (so the
library page cannot drift from the code), and the public names it uses are exported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "library.md"


def test_the_library_page_runs_as_written(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 4  # shards, plain loop, exactness, Trainer
    script = tmp_path / "library_md.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    out = res.stdout
    assert re.search(r"loss [\d.]+ -> [\d.]+ over 20 steps", out), out
    assert "pretraining sequences among the first 40: 10" in out
    assert "Trainer: 10 steps, mean loss" in out
    assert (tmp_path / "lib-demo" / "shards" / "target" / "manifest.json").is_file()


def test_public_names_are_exported() -> None:
    import dist_forget.data as data
    import dist_forget.optim as optim

    for module in (data, optim):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    assert {"HFMixedStream", "MixtureConfig", "MixedStream", "write_shards"} <= set(data.__all__)
    assert {"AnchoredAdamW", "param_groups"} <= set(optim.__all__)


def test_importing_a_data_submodule_does_not_import_torch() -> None:
    code = "import sys, dist_forget.data.tokenizer, dist_forget.data; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
