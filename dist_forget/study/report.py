"""`dist-forget study report`: the study report of a finished sweep, written as one folder.

REPORT.md (setup, held-out error per law form, the paper's findings checked with numbers, the seed noise
floor, fitted parameters with intervals, plots, the runs table), runs.csv, fit.json and PNG plots (plots.py). The
laws are fitted with the same code as `dist-forget fit` on every size but the largest and checked on the
largest; the findings are paired comparisons from `findings.py`. The folder is replaced as a whole, except
what a report never writes (REPORT_OUTPUTS): NOTES.md, a discussion written by hand and shown in REPORT.md
after the findings, and pilots, run files or a held-out-slice CSV are kept.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError
from dist_forget.io import atomic_dir, write_json_atomic, write_text_atomic
from dist_forget.laws._blas import kernels
from dist_forget.laws.fit import FitConfig, check_identifiable
from dist_forget.laws.forms import get_form
from dist_forget.laws.pipeline import fit_runs, runs_for, walk_runs
from dist_forget.laws.report import plot_all, report_markdown
from dist_forget.laws.table import read_runs, seed_means
from dist_forget.numfmt import json_finite, num, pct
from dist_forget.study import findings as fd
from dist_forget.study import protocol
from dist_forget.study.law_sections import (
    MIN_SIZES_FOR_LAWS,
    heldout_head,
    ladder_walk_text,
    local_exponent_text,
    walk_by_form_text,
)
from dist_forget.study.plots import plot_study

STUDY_FORMS = ("finetune", "finetune-power", "chinchilla", "finetune-eff-data", "finetune-eff-params",
               "forgetting", "forgetting-anchored", "kalajdzievski")  # fmt: skip


def report(
    sweep: Path,
    out: Path,
    forms: tuple[str, ...] = STUDY_FORMS,
    bootstrap: int = 1000,
    workers: int = 0,
    seed: int = 0,
    seed_mean: bool = False,
    held_out_slice: Path | None = None,
) -> int:
    """Write the study report of a finished sweep (REPORT.md, runs.csv, fit.json, plots) into --out.

    --sweep is the sweep's out_dir (it holds runs.csv, pretrain/ and finetune/). Laws are fitted on all
    sizes but the largest and checked on the largest; findings are paired comparisons of runs.

    Args:
        sweep: the sweep's out_dir (runs.csv, pretrain/, finetune/)
        out: folder for REPORT.md, runs.csv, fit.json and plots
        forms: law forms to fit and compare
        bootstrap: bootstrap resamples for the 95 % intervals
        workers: processes for the bootstrap; 0 = one per core
        seed: seed of the bootstrap resamples
        seed_mean: fit and score the laws on the mean of each point's seeds (the findings keep every run)
        held_out_slice: a CSV of `dist-forget study held-out-slice`: finding 3 measured on that slice too
    """
    start = time.monotonic()
    runs_csv = sweep / "runs.csv"
    if not runs_csv.is_file():
        raise UserError(f"{runs_csv}: no runs table; run `dist-forget sweep --config ...` to the end first")
    table = read_runs(runs_csv)
    notes = (out / "NOTES.md").read_text() if (out / "NOTES.md").is_file() else ""
    runs = fd.runs_of(table)
    slice_runs = _slice_runs(held_out_slice, runs) if held_out_slice else None
    print(f"read {len(runs)} runs from {runs_csv}", flush=True)
    cfg = FitConfig(bootstrap=bootstrap, seed=seed, workers=workers)
    # the runs table is copied beside the report below: its name, not a path of this machine
    meta = {"source": "runs.csv", "n_runs": len(table), "delta": cfg.delta, "loss": cfg.loss,
            "bootstrap": bootstrap, "holdout": "largest", "seed": seed, "blas_kernels": kernels()}  # fmt: skip
    fit_table = table
    if seed_mean:
        fit_table, averaged = seed_means(table, str(runs_csv))
        meta |= {"seed_mean": True, "seed_mean_points": averaged}
    sizes = len({r.n for r in runs})
    # a law in N fitted on fewer sizes than it has parameters in N says nothing
    if sizes < MIN_SIZES_FOR_LAWS:
        print(f"laws: not fitted ({sizes} model size{'s' if sizes != 1 else ''}; "
              f"a law in N needs >= {MIN_SIZES_FOR_LAWS})", flush=True)  # fmt: skip
        forms = ()
    forms = _identifiable(forms, fit_table)
    meta["forms"] = list(forms)
    records = fit_runs(fit_table, forms, cfg, "largest")
    walk = walk_runs(fit_table, forms, replace(cfg, bootstrap=0))  # the same fit, point estimates only
    with atomic_dir(out, overwrite=True) as tmp:
        shutil.copyfile(runs_csv, tmp / "runs.csv")
        write_json_atomic(tmp / "fit.json", json_finite({"meta": meta, "fits": records}))
        fit_pngs = [p.name for p in plot_all(tmp, records, fit_table)] if records else []
        study_pngs = plot_study(tmp, runs, sweep)
        facts = fd.collect(runs, protocol.check(sweep), records, walk)
        if slice_runs is not None:  # the CSV goes with the report it is read in
            shutil.copyfile(held_out_slice, tmp / held_out_slice.name)
            facts["held_out_slice"] = fd.slice_findings(slice_runs, held_out_slice.name, facts["protocol"])
        write_json_atomic(tmp / "findings.json", json_finite(facts))
        text = report_text(sweep, runs, records, meta, facts, fit_pngs, study_pngs, notes)
        if notes:
            write_text_atomic(tmp / "NOTES.md", notes)
        write_text_atomic(tmp / "REPORT.md", text)
        kept = _keep_the_rest(out, tmp)
    if kept:
        print(f"kept in {out} (not written by the report): {', '.join(kept)}")
    print(
        f"wrote {out / 'REPORT.md'} ({len(fit_pngs) + len(study_pngs)} plots) in {time.monotonic() - start:.0f} s"
    )
    return 0


# what a report writes: a rerun replaces them all, so a plot of a form no longer fitted does not linger
REPORT_OUTPUTS = ("REPORT.md", "runs.csv", "fit.json", "findings.json", "*.png")


def _keep_the_rest(out: Path, tmp: Path) -> list[str]:
    """Copy into the new report folder what the old one holds and a report never writes (hand-written notes,
    pilots, run files, a held-out-slice CSV): replacing the folder must not lose them. Returns their names."""
    if not out.is_dir():
        return []
    kept = []
    for entry in sorted(out.iterdir()):
        if (tmp / entry.name).exists() or (entry.is_file() and any(entry.match(g) for g in REPORT_OUTPUTS)):
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)
        kept.append(entry.name + ("/" if entry.is_dir() else ""))
    return kept


def _slice_runs(path: Path, runs: list[fd.Run]) -> list[fd.Run]:
    """The sweep's runs with their pretraining losses replaced by those on a held-out slice (the CSV of
    `study held-out-slice`, matched by run name); runs the CSV lacks are left out."""
    if path.name in REPORT_OUTPUTS:
        raise UserError(f"--held-out-slice {path}: the report writes a file of that name; rename the CSV")
    try:
        with open(path, newline="") as fh:
            rows = {row["run"]: row for row in csv.DictReader(fh)}
        by_name = {r.name: r for r in runs}
        return [
            replace(by_name[name], pt=float(row["slice_loss"]), pt0=float(row["slice_loss_base"]))
            for name, row in rows.items()
            if name in by_name
        ]
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(
            f"--held-out-slice {path}: not a CSV of `dist-forget study held-out-slice` ({exc}); write it with "
            "that command"
        ) from None


def _identifiable(forms: tuple[str, ...], table: Any) -> tuple[str, ...]:
    """The forms these runs can fit. A study compares every form it can; one the runs cannot identify (a
    column older runs lack, like kalajdzievski's ft_loss_base, or a knob the sweep never varied, like
    anchor_decay) is left out and said so, instead of failing the whole report."""
    usable = []
    for name in forms:
        form = get_form(name)
        try:
            for domain in table.domains():
                check_identifiable(form, runs_for(form, table.for_domain(domain)), f"domain {domain!r}")
        except UserError as exc:
            print(f"form {name}: left out ({exc})", flush=True)
            continue
        usable.append(name)
    return tuple(usable)


# ---------------------------------------------------------------------------------------------- text


def _ladder_text(ladder: list[dict[str, Any]]) -> list[str]:
    """The pretrained ladder: what it pretrained on (shard folders' domains, unique training tokens), then
    one table row per size."""
    data = sorted({(r["data"], r["unique_tokens"]) for r in ladder})
    what = "; ".join(f"`{name}`, {unique:,} unique training tokens" for name, unique in data)
    rows = [f"Pretrained ladder (from scratch on {what}):", "",
            "| size | N (non-embedding) | total params | pretraining tokens | steps | English val loss |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for r in ladder:
        rows.append(f"| {r['size']} | {r['model_params']:,.0f} | {r['total_params']:,} | {r['tokens']:,} | "
                    f"{r['steps'] or '?'} | {num(r['pt_loss'])} |")  # fmt: skip
    return rows


def _finetune_setup(sweep: Path, runs: list[fd.Run]) -> str:
    cfgs = sorted((sweep / "finetune").glob("*/run_config.json"))
    if not cfgs:
        return ""
    c = protocol.read_json(cfgs[0])
    o, s, t = c.get("optim", {}), c.get("schedule", {}), c.get("train", {})
    # the lr may differ by size (finetune.size_overrides); a run folder's name starts with its size
    lrs = {cfg.parent.name.split("_")[0]: protocol.read_json(cfg).get("optim", {}).get("lr") for cfg in cfgs}
    lr = (
        f"{next(iter(lrs.values()))}"
        if len(set(lrs.values())) == 1
        else "by size " + ", ".join(f"{size} {v:g}" for size, v in sorted(lrs.items(), key=lambda kv: -kv[1]))
    )
    return (
        f"Finetuning: at most {s.get('steps')} steps of {t.get('batch_size')} sequences, AdamW lr {lr} "
        f"({s.get('kind')}, warmup {s.get('warmup')}), betas {o.get('betas')}, no weight decay; target and "
        f"English validation loss every {t.get('eval_every')} steps on {t.get('eval_sequences')} held-out "
        f"sequences each, early stop after {t.get('patience')} evaluations without a better target loss; the "
        f"reported losses are at the best target-validation step (bottom of the U-curve). Domains {', '.join(sorted({r.domain for r in runs}))}; D ∈ "
        f"{{{', '.join(f'{d:,.0f}' for d in sorted({r.d for r in runs}))}}} unique target tokens; p ∈ "
        f"{{{', '.join(f'{p:g}' for p in sorted({r.p for r in runs}))}}}; anchor_decay ∈ "
        f"{{{', '.join(f'{a:g}' for a in sorted({r.a for r in runs}))}}}; seeds "
        f"{{{', '.join(str(x) for x in sorted({r.seed for r in runs}))}}}. {len(runs)} finetuning runs."
    )


def _machines_text(proto: dict[str, Any]) -> list[str]:
    rows = proto.get("machines")
    if not rows:  # a report of runs from before the protocol block said where they ran
        return []
    where = "; ".join(f"{r['machine']}: {r['runs']} runs, {r['wall_s'] / 3600:.1f} h" for r in rows)
    if len(rows) == 1 and rows[0]["machine"] != "not recorded":
        why = "A run repeats bit for bit on one such machine, not across CPUs: these are that machine's figures."
    else:
        why = ("A run repeats bit for bit on one machine, not across CPUs: runs made on different machines (or "
               "not saying where) differ by that spread as well.")  # fmt: skip
    return [f"Where the runs ran (each run's report.json; run wall time summed, pretraining included): {where}. "
            f"{why}", ""]  # fmt: skip


def _trend_rows(trend: dict[str, Any], along: str) -> list[str]:
    # a series' points are keyed by a number in memory and by its text in findings.json
    points = [{float(x): f for x, f in s["points"].items()} for s in trend["series"]]
    xs = sorted({x for pts in points for x in pts})
    head = "N" if along == "n" else "D"
    fixed = "domain, D" if along == "n" else "domain, N"
    rows = [f"| {fixed} | " + " | ".join(f"{head} = {x:,.0f}" for x in xs) + " |", "|---|" + "---|" * len(xs)]
    for s, pts in zip(trend["series"], points):
        cells = " | ".join(num(pts.get(x)) for x in xs)
        rows.append(f"| {s['domain']}, {s['fixed']:,.0f} | {cells} |")
    return rows


def report_text(
    sweep: Path,
    runs: list[fd.Run],
    records: list[dict[str, Any]],
    meta: dict[str, Any],
    facts: dict[str, Any],
    fit_pngs: list[str],
    study_pngs: list[str],
    notes: str = "",
) -> str:
    noise = facts["noise_floor"]
    largest = max(r.n for r in runs)
    ladder = protocol.ladder(sweep)
    lines = [
        f"# Study report: {sweep.name}",
        "",
        f"Generated by `dist-forget study report --sweep {sweep} --out <this folder>` from {len(runs)} "
        "finetuning runs. Losses are validation losses in nats per token; forgetting F = pretraining (English) "
        "validation loss at the best target checkpoint minus that of the base model. Machine-readable: "
        "`runs.csv`, `fit.json`, `findings.json` (fractions, not percent).",
        "",
        "## Setup",
        "",
        *(
            _ladder_text(ladder)
            if ladder
            else ["No pretraining ladder: the finetunes start from a pretrained model (model.init_from)."]
        ),
        "",
        _finetune_setup(sweep, runs),
        "",
        *_machines_text(facts["protocol"]),
        *_protocol_text(facts["protocol"]),
        *heldout_head(runs, records, largest, facts["heldout"]),
    ]
    for law, best in facts["heldout"]["best"].items() if records else ():
        lines.append(f"- {law}: best form **{best['form']}**, held-out MRE {pct(best['mre'])} — goal ≤ "
                     f"{pct(best['goal'])} {'reached' if best['reached'] else 'not reached'}.")  # fmt: skip
    for nf in noise:
        lines.append(
            f"- Seed noise floor ({len(nf['seeds'])} seeds, {nf['domain']}, N = {nf['model_params']:,.0f}, "
            f"D = {nf['target_tokens']:,.0f}, p = {nf['inject_fraction']:g}, anchor_decay = {nf['anchor_decay']:g}): "
            f"relative std of the target loss {pct(nf['ft_rel_std'])}, of the pretraining loss "
            f"{pct(nf['pt_rel_std'])}, of forgetting {pct(nf['forgetting_rel_std'])}. A seed draws both which "
            "target sequences make up D and their order; a law cannot predict one run better than this."
        )
    if facts["heldout"]["undermined"]:
        lines.append(
            f"- **Protocol not met** ({', '.join(facts['protocol']['failed'])}): these errors say how well "
            "each form describes these runs, not whether the paper's laws extrapolate."
        )
    lines += ladder_walk_text(facts.get("ladder_walk", {}))
    lines += walk_by_form_text(facts.get("ladder_walk", {}))
    lines += local_exponent_text(facts["forgetting_vs_size"])
    lines += ["", "## The paper's findings, checked", ""]
    lines += _findings_text(facts)
    if notes:
        lines += ["", "## Discussion (NOTES.md, written by hand)", "", notes.strip()]
    if records:
        lines += ["", "## Fitted laws", ""]
        fit_md = report_markdown(records, meta, []).split("\n", 2)[2]  # drop its title line
        lines += [fit_md.replace("## ", "### ")]
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in study_pngs + fit_pngs]
    lines += [
        "",
        "## Runs",
        "",
        "| run | ft_loss | pt_loss | pt_loss_base | forgetting |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r.n, r.domain, r.d, r.p, r.a, r.seed)):
        lines.append(f"| {r.name} | {r.ft:.4f} | {r.pt:.4f} | {r.pt0:.4f} | {r.forgetting:+.4f} |")
    return "\n".join(lines) + "\n"


def _protocol_text(proto: dict[str, Any]) -> list[str]:
    th = proto["thresholds"]
    inj = proto["injected_at_best"].get("0.01")
    mark = {True: "met", False: "**not met**", None: "n/a: no pretraining ladder (a pretrained model)"}
    c = proto["checks"]
    losses = ", ".join(f"{float(n):,.0f}: {v:.3f}" for n, v in proto["pretrain_loss_by_size"].items())
    tpp = ", ".join(f"{v:.1f}" for v in proto["pretrain_tokens_per_param"].values())
    lines = [
        "## Protocol (checked in the run data)",
        "",
        "| check | measured | required | |",
        "|---|---|---|---|",
        f"| ladder trained | tokens per total parameter {tpp or '–'} | ≥ {th['min_tokens_per_param']:g} | "
        f"{mark[c['ladder_trained']]} |",
        *(  # protocol blocks written before this check have no row for it
            [
                f"| ladder on fresh tokens | passes over the unique pretraining tokens "
                f"{', '.join(f'{v:.2f}' for v in proto['pretrain_epochs'].values()) or '–'} | "
                f"≤ {th['max_pretrain_epochs']:g} | {mark[c['ladder_fresh']]} |"
            ]
            if "ladder_fresh" in c
            else []
        ),  # fmt: skip
        f"| ladder ordered | English val loss by N {losses or '–'} | falls by > {th['min_ladder_gap']:g} nats "
        f"at every rung | {mark[c['ladder_ordered']]} |",
        f"| U-curve bottom reached | best eval before the last in {pct(proto['share_best_before_last'])} of "
        f"finetunes, and the target loss then rose ≥ {th['min_rise']:g} nats in "
        f"{pct(proto.get('share_past_bottom', math.nan))} | ≥ {pct(th['min_share_best_before_last'])} | "
        f"{mark[c['u_curve_bottom']]} |",
        f"| injection acts | p = 1 % runs injected {inj['min'] if inj else '–'} (min), "
        f"{num(inj['mean'], '.1f') if inj else '–'} (mean) sequences by their best step | ≥ {th['min_injected']} | "
        f"{mark[c['injection_acts']]} |",
        f"| eval size | {proto['eval_sequences']} sequences per side | ≥ {th['min_eval_sequences']} | "
        f"{mark[c['eval_sequences']]} |",
        "",
    ]
    if proto["met"]:
        lines.append(
            "The protocol is met: the findings below are evidence on the paper's questions at this scale."
        )
    else:
        lines.append(
            f"**Protocol not met** ({', '.join(proto['failed'])}): the findings these checks undermine "
            'carry no verdict ("protocol not met"); what the runs alone would say is shown beside it.'
        )
    return lines + [""]


def _verdict(stated: dict[str, Any]) -> str:
    """The verdict, unless a failed protocol check undermines this finding."""
    if stated["undermined"]:
        return f"protocol not met (the runs alone would say: {stated['verdict']})"
    return stated["verdict"]


def _findings_text(facts: dict[str, Any]) -> list[str]:
    size, data, verdicts = facts["forgetting_vs_size"], facts["forgetting_vs_data"], facts["verdicts"]
    lines = [
        f"**1. Forgetting shrinks with model size — {_verdict(verdicts['forgetting_vs_size'])}.** "
        + (
            f"At p = 0, forgetting at the largest size is below that at the smallest in "
            f"{pct(size['share_agreeing'])} of {size['n_series']} (domain, D) series; mean ratio F(largest N) / "
            f"F(smallest N) = {num(size['mean_ratio_last_first'])}."
            if size["n_series"]
            else "No (domain, D) has runs at two model sizes at p = 0."
        ),
        "",
        *_trend_rows(size, "n"),
        "",
        f"**2. Forgetting grows with target data D — {_verdict(verdicts['forgetting_vs_data'])}.** "
        + (
            f"At p = 0, forgetting at the largest D is above that at the smallest in {pct(data['share_agreeing'])} "
            f"of {data['n_series']} (domain, N) series; mean ratio F(largest D) / F(smallest D) = "
            f"{num(data['mean_ratio_last_first'])}."
            if data["n_series"]
            else "No (domain, N) has runs at two D at p = 0."
        ),
        "",
        *_trend_rows(data, "d"),
        "",
    ]
    inj, th = facts["injection"], facts["thresholds"]
    headline, p_text = str(th["headline_p"]), f"p = {100 * th['headline_p']:g} %"
    if "injection" in verdicts:
        one = inj[headline]
        lines.append(
            f"**3. {p_text} removes most forgetting — {_verdict(verdicts['injection'])}.** Over "
            f"{one['n_pairs']} pairs (same domain, N, D, seed; {p_text} vs 0) it removes "
            f"{pct(one['forgetting_removed_mean'])} of the forgetting on average (range "
            f"{pct(one['forgetting_removed_min'])} to {pct(one['forgetting_removed_max'])})."
        )
        # findings written before the count existed render without it
        if above := one.get("n_removed_above_all", 0):
            lines[-1] += (
                f" In {above} of {one['n_pairs']} pairs it removes more than all of it: the pretraining validation "
                "loss ends below the base model's, so the injected data also teaches the distribution forgetting "
                "is measured on, and the share overstates what injection protects; "
                + ("the held-out slice below measures forgetting without that."
                   if "held_out_slice" in facts
                   else "`dist-forget study held-out-slice` measures it on text no run injects or trains on.")
            )  # fmt: skip
    for key, e in inj.items():
        if key != headline and e["n_pairs"]:
            lines.append(f"  At p = {float(key):g}: {pct(e['forgetting_removed_mean'])} removed on average "
                         f"({e['n_pairs']} pairs).")  # fmt: skip
    lines.append("")
    # reports written before the implied strength was computed render without it
    if facts.get("implied_injection_strength", {}).get("records"):
        lines += _implied_strength_text(facts["implied_injection_strength"], facts["protocol"])
    if "held_out_slice" in facts:
        lines += _slice_text(facts["held_out_slice"], facts["protocol"], p_text)
    for key, stated in verdicts["ft_not_hurt"].items():
        e = inj[key]
        lines.append(
            f"**4. Injection does not hurt the target loss (p = {float(key):g}) — {_verdict(stated)}.** Mean "
            f"relative change of the best target loss {e['ft_change_mean']:+.2%} (largest "
            f"{e['ft_change_max']:+.2%}; not worse in {pct(e['share_ft_not_worse'])} of {e['n_pairs']} pairs); "
            f"the verdict allows {pct(th['ft_tolerance'])}. Paired runs share their target sequences and order, "
            "so the seed noise floor, which changes both, is not the yardstick here."
        )
    lines.append("")
    avi = facts["anchored_vs_injection"]["by_anchor_decay"]
    for a, eff in facts["anchor"].items():
        cmp_ = avi.get(a, {})
        lines.append(
            f"**5. Anchored AdamW (anchor_decay = {float(a):g}, p = 0) vs injection.** Against plain AdamW at "
            f"p = 0 it removes {pct(eff['forgetting_removed_mean'])} of the forgetting and changes the target "
            f"loss by {eff['ft_change_mean']:+.2%} ({eff['n_pairs']} pairs). Against the plain-AdamW run (any p) "
            f"with the closest target loss (mean gap {pct(cmp_.get('ft_gap_mean_abs'))}), it forgets "
            f"{num(abs(cmp_.get('forgetting_diff_mean', float('nan'))))} nats/token "
            f"{'more' if cmp_.get('forgetting_diff_mean', 0) > 0 else 'less'} on average and less in "
            f"{pct(cmp_.get('share_anchor_forgets_less'))} of {cmp_.get('n_pairs', 0)} pairs."
        )
    for key, diffs in facts["same_as_p0"].items():
        if diffs and float(key) < th["headline_p"]:
            worst = max(max(d["ft_diff"], d["pt_diff"]) for d in diffs)
            lines += ["", f"**p = {float(key):g}** on {len(diffs)} runs: largest |loss − loss at p = 0| = "
                          f"{worst:.2e} nats/token."]  # fmt: skip
    return lines


def _slice_text(sliced: dict[str, Any], proto: dict[str, Any], p_text: str) -> list[str]:
    """Finding 3 again, with forgetting measured on a validation slice that no run injects or trains on."""
    one = sliced["injection"].get(str(fd.HEADLINE_P), {"n_pairs": 0})
    lines = [
        f"**Finding 3 on a held-out slice** ([{sliced['source']}]({sliced['source']}), {sliced['n_runs']} runs: "
        "each run's best model and its base model evaluated on validation sequences that no run injects or trains "
        "on, by `dist-forget study held-out-slice`). Where the pretraining validation set comes from the injected "
        "corpus, injection also trains on what forgetting is measured on; this slice does not."
    ]
    if sliced["undermined"]:
        lines[0] += f" **Protocol not met** ({', '.join(proto['failed'])}): context, not a verdict."
    if one["n_pairs"]:
        lines[0] += (
            f" {p_text} removes {pct(one['forgetting_removed_mean'])} of the forgetting on it on average "
            f"({one['n_pairs']} pairs, range {pct(one['forgetting_removed_min'])} to "
            f"{pct(one['forgetting_removed_max'])}): on this slice, finding 3 {sliced['verdict']}."
        )
    ps = [k for k in sliced["injection"] if sliced["injection"][k]["n_pairs"]]
    head = " | ".join(f"F(p = {100 * float(k):g} %) | removed" for k in ps)
    lines += ["", f"| domain | D | F(0) | {head} |", "|---|---|---|" + "---|---|" * len(ps)]
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    for k in ps:
        for pair in sliced["injection"][k]["pairs"]:
            rows.setdefault((pair["domain"], pair["target_tokens"]), {"f0": pair["forgetting_p0"]})[k] = pair
    for (domain, d), row in sorted(rows.items()):
        cells = " | ".join(
            f"{row[k]['forgetting']:+.4f} | {pct(row[k]['forgetting_removed'])}" if k in row else "– | –"
            for k in ps
        )
        lines.append(f"| {domain} | {d:,.0f} | {row['f0']:+.4f} | {cells} |")
    for size in sliced["implied_injection_strength"]["by_size"]:
        if size["n_identified"]:
            lines += ["", f"Implied on the slice at N = {size['model_params']:,.0f}: median B "
                      f"{_strength(size['B_median'])} (range {_strength(size['B_min'])} to "
                      f"{_strength(size['B_max'])}), median α {size['alpha_median']:.2f}; identified at "
                      f"{size['n_identified']} of {size['n']} (domain, D)."]  # fmt: skip
    return lines + [""]


def _strength(b: float) -> str:
    return f"{b:,.0f}" if b >= 10 else f"{b:.3g}"


def _implied_strength_text(implied: dict[str, Any], proto: dict[str, Any]) -> list[str]:
    """Finding 3's runs read through the forgetting law at each size: the B and α that r(p1) and r(p2) imply."""
    p1, p2 = (f"{100 * implied[k]:g} %" for k in ("p1", "p2"))
    lo, hi = implied["bracket"]
    lines = [
        "**Injection strength implied at each size.** The forgetting law F = A·D^β / ((1 + B·p)·N)^α says "
        "injection multiplies the effective N by 1 + B·p: p = 1/B doubles it. At each domain, N and D, the "
        f"ratios r(p) = F(p) / F(0) at p = {p1} and {p2} fix B and α without a fit across sizes (B searched "
        f"from {lo:g} to {hi:.0e}). The paper reports B of 10²–10⁴ at 41M–1.27B parameters, where p = 1 % is 1 to 100 "
        "times 1/B.",
    ]
    if implied["undermined"]:
        lines[0] += (
            f" **Protocol not met** ({', '.join(proto['failed'])}): these values are context, not a verdict."
        )
    for size in implied["by_size"]:
        n = size["model_params"]
        found = (
            f"median B {_strength(size['B_median'])} (range {_strength(size['B_min'])} to "
            f"{_strength(size['B_max'])}), median α {size['alpha_median']:.2f}"
            if size["n_identified"]
            else "B not identified"
        )
        lines += [
            "",
            f"N = {n:,.0f}: {found}; identified at {size['n_identified']} of {size['n']} (domain, D).",
            "",
            f"| domain | D | r({p1}) | r({p2}) | implied B | implied α |",
            "|---|---|---|---|---|---|",
        ]
        # one row per (domain, D): the seed mean where several seeds have all three runs
        shown: dict[tuple[str, float], dict[str, Any]] = {}
        for x in implied["records"]:
            key = (x["domain"], x["target_tokens"])
            if x["model_params"] == n and len(x["seeds"]) >= len(shown.get(key, {"seeds": ()})["seeds"]):
                shown[key] = x
        for (domain, d), x in sorted(shown.items()):
            seeds = f" (mean of seeds {', '.join(map(str, x['seeds']))})" if len(x["seeds"]) > 1 else ""
            b = _strength(x["B"]) if x["identified"] else f"not identified ({x['reason']})"
            lines.append(f"| {domain} | {d:,.0f}{seeds} | {num(x['ratio_p1'])} | {num(x['ratio_p2'])} | {b} | "
                         f"{num(x['alpha'], '.2f')} |")  # fmt: skip
    return lines + [""]
