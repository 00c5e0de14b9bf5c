"""`dist-forget data ...` through the real CLI entry point: output, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_forget.cli import main
from dist_forget.data.manifest import read_manifest

DATA = Path(__file__).parents[1] / "data"


def test_preview_json(tiny_data, capsys):
    rc = main(
        [
            "data",
            "preview",
            "--target",
            str(tiny_data.code),
            "--pretrain",
            str(tiny_data.english),
            "--inject-fraction",
            "0.01",
            "--target-tokens",
            str(100 * tiny_data.seq_len),
            "--steps",
            "50",
            "--global-batch",
            "20",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sequences"] == 1000 and out["pretrain_sequences"] == 10
    assert out["unique_target_tokens"] == 100 * tiny_data.seq_len
    assert out["target_epochs"] == pytest.approx(990 / 100)
    assert out["pretrain_tokens_injected"] == 10 * tiny_data.seq_len
    assert out["observed_fraction"] == 0.01 and out["inject_fraction_exact"] == "1/100"


@pytest.mark.parametrize(
    "steps, p, warned",
    [
        ("5", "0.01", "p = 0.01 injects 0 pretraining sequences over 5 steps x 8 sequences (40): the run trains "
         "as p = 0; 63 steps (or a larger batch) inject at least 5"),
        ("50", "0.01", "p = 0.01 injects 4 pretraining sequences over 50 steps x 8 sequences (400); 63 steps"),
        ("63", "0.01", None),  # floor(504 x 0.01) = 5: enough
        ("5", "0", None),  # no injection asked for: nothing to warn about
    ],
)  # fmt: skip
def test_preview_warns_when_p_injects_almost_nothing(tiny_data, capsys, steps, p, warned):
    args = ["data", "preview", "--target", str(tiny_data.code), "--pretrain", str(tiny_data.english),
            "--inject-fraction", p, "--steps", steps, "--global-batch", "8"]  # fmt: skip
    assert main(args) == 0
    out, err = capsys.readouterr()
    if warned is None:
        assert err == ""
    else:
        (line,) = err.splitlines()
        assert line.startswith("warning: " + warned)
    assert "pretrain_sequences" in out  # the table is printed all the same


def test_preview_table(tiny_data, capsys):
    assert (
        main(["data", "preview", "--target", str(tiny_data.code), "--steps", "3", "--global-batch", "4"]) == 0
    )
    assert "target_epochs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--inject-fraction", "1.0"], "inject_fraction"),
        (["--inject-fraction", "-0.5"], "inject_fraction"),
        (["--target-tokens", "999999999"], "exceeds the target train split"),
    ],
)
def test_preview_bad_input_is_one_line_exit_2(tiny_data, capsys, args, needle):
    rc = main(
        [
            "data",
            "preview",
            "--target",
            str(tiny_data.code),
            "--pretrain",
            str(tiny_data.english),
            "--steps",
            "1",
            "--global-batch",
            "1",
            *args,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1 and err.startswith("error: ")


def test_unknown_domain(tmp_path, capsys):
    assert main(["data", "fetch", "--out", str(tmp_path), "--domains", "klingon"]) == 2
    err = capsys.readouterr().err
    assert "unknown domain 'klingon'" in err and "english" in err
    assert not (tmp_path / "corpora").exists()


def test_tokenizer_and_shard_commands(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "tokenizer",
                "--corpus",
                str(DATA / "english.jsonl"),
                str(DATA / "code.jsonl"),
                "--out",
                str(tmp_path / "tok"),
                "--vocab-size",
                "400",
            ]
        )
        == 0
    )
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert (
        main(
            [
                "data",
                "shard",
                "--corpus",
                str(DATA / "code.jsonl"),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--out",
                str(tmp_path / "code"),
                "--seq-len",
                "32",
            ]
        )
        == 0
    )
    m = read_manifest(tmp_path / "code")
    assert m.domain == "code" and m.seq_len == 32 and m.vocab_size == 400
    assert "train_seq" in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "shard",
                "--corpus",
                str(tmp_path / "none.jsonl"),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "none.jsonl does not exist" in capsys.readouterr().err
