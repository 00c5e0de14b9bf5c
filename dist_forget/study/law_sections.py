"""The study report's sections on the laws: the held-out error of every form on the largest size, the ladder
walk (each form fitted on the k smallest sizes and scored on the next one up, beside the seed floor), and
forgetting's local exponent in N between neighbouring sizes. Each renders Markdown lines from findings.json's
facts alone, so a committed report can be checked against its findings."""

from __future__ import annotations

from typing import Any

from dist_forget.numfmt import num, pct
from dist_forget.study import findings as fd

MIN_SIZES_FOR_LAWS = 3  # fit on >= 2 sizes, hold out the largest


def heldout_rows(records: list[dict[str, Any]], heldout: dict[str, Any]) -> list[str]:
    domains = sorted({r["domain"] for r in records})
    rows = ["| law | form | " + " | ".join(domains) + " | mean | goal |",
            "|---|---|" + "---|" * (len(domains) + 2)]  # fmt: skip
    for form in dict.fromkeys(r["form"] for r in records):
        recs = {r["domain"]: r for r in records if r["form"] == form}
        law = next(iter(recs.values()))["law"]
        vals = [fd.heldout_mre(recs[d]) if d in recs else None for d in domains]
        goal = heldout["best"].get(law, {}).get("goal")
        rows.append(f"| {law} | {form} | " + " | ".join(pct(v) for v in vals) + f" | "
                    f"**{pct(heldout['mre_by_form'][form])}** | {pct(goal)} |")  # fmt: skip
    return rows


def heldout_head(
    runs: list[fd.Run], records: list[dict[str, Any]], largest: float, heldout: dict[str, Any]
) -> list[str]:
    sizes = len({r.n for r in runs})
    if sizes < MIN_SIZES_FOR_LAWS or not records:
        return [
            "## Laws: not fitted",
            "",
            f"These runs have {sizes} model size{'s' if sizes != 1 else ''}: a law in N is fitted on all sizes but "
            f"the largest and checked on it, which needs >= {MIN_SIZES_FOR_LAWS} sizes (and enough runs per "
            "domain for each form's parameters). The report gives what the runs measure directly: forgetting "
            "by p per domain (finding 3) and the protocol checks.",
            "",
        ]
    return [
        f"## Held-out error: laws fitted on N < {largest:,.0f}, predicting N = {largest:,.0f}",
        "",
        "Mean relative error of the predicted loss on the held-out largest size, per domain (each form fitted "
        "per domain; forms without anchor_decay use the plain-AdamW runs only).",
        "",
        *heldout_rows(records, heldout),
        "",
    ]


def ladder_walk_text(walk: dict[str, Any]) -> list[str]:
    """The ladder walk: fitted on the k smallest sizes, scored on the next one up, beside the seed floor."""
    if not walk.get("summary"):
        return []  # fewer than 3 sizes, or a report written before the walk existed
    lines = [
        "",
        "## Held-out error as the fit sees more sizes",
        "",
        "Each form fitted (point fit) on the k smallest sizes and scored on the next size up only. Best form: "
        "the lowest held-out MRE averaged over the domains, chosen per law and held-out size. Seed floor: the "
        "MRE a law predicting every expected loss exactly would still show on those runs, 0.8 σ (σ the relative "
        "seed std of the predicted loss at that size; divided by √m for a mean of m seeds); – where that size has no "
        f"point with 3 seeds. Goal: the largest size within {walk['goal_ratio']:g}× its floor.",
    ]
    if walk.get("undermined"):
        lines[-1] += " **Protocol not met**: these errors describe the runs, not the laws' extrapolation."
    for law in dict.fromkeys(s["law"] for s in walk["summary"]):
        lines += ["", f"**{law}**", "", "| held-out size | sizes fitted | best form | mean held-out MRE | seed floor | "
                  "ratio to floor |", "|---|---|---|---|---|---|"]  # fmt: skip
        for s in (s for s in walk["summary"] if s["law"] == law):
            fitted = ", ".join(f"{n:,.0f}" for n in s["sizes_fitted"])
            lines.append(f"| {s['model_params']:,.0f} | {fitted} | {s['best_form']} | {pct(s['mre'])} | "
                         f"{pct(s['floor'])} | {num(s['ratio_to_floor'], '.2f')} |")  # fmt: skip
        goal, at = walk["goal"][law], f"- {law} at N = {walk['goal'][law]['model_params']:,.0f}"
        if goal["reached"] is None:
            lines += [
                "",
                f"{at}: no seed floor measured at this size (no point with 3 seeds), goal not checked.",
            ]
        else:
            lines += ["", f"{at}: {num(goal['ratio_to_floor'], '.2f')}× the floor — goal ≤ {walk['goal_ratio']:g}× "
                      f"{'reached' if goal['reached'] else 'not reached'}."]  # fmt: skip
    return lines


def walk_by_form_text(walk: dict[str, Any]) -> list[str]:
    """Every form's held-out MRE per domain at each rung of the ladder walk: how a form's error moves as its
    fit sees one more size, which the best-form summary above hides."""
    records = walk.get("records") or []
    if not records:
        return []
    sizes = sorted({r["model_params"] for r in records})
    domains = sorted({r["domain"] for r in records})
    mre = {(r["law"], r["form"], r["domain"], r["model_params"]): r["mre"] for r in records}
    lines = [
        "",
        "Every form, per domain (held-out MRE at each held-out size; – where it was not fitted there):",
    ]
    for law in dict.fromkeys(r["law"] for r in records):
        lines += ["", f"| {law} form | domain | " + " | ".join(f"{n:,.0f}" for n in sizes) + " |",
                  "|---|---|" + "---|" * len(sizes)]  # fmt: skip
        for form in dict.fromkeys(r["form"] for r in records if r["law"] == law):
            lines += [f"| {form} | {domain} | " + " | ".join(pct(mre.get((law, form, domain, n))) for n in sizes)
                      + " |" for domain in domains]  # fmt: skip
    return lines


def local_exponent_text(trend: dict[str, Any]) -> list[str]:
    """Forgetting's local exponent in N between neighbouring sizes of each p = 0 series: a power law has one
    exponent at every rung, so how it moves along the ladder says how far a law fitted below extrapolates."""
    rows, steps = [], []
    for s in trend.get("series", []):
        exps = fd.local_exponents({float(n): f for n, f in s["points"].items()})
        if exps:
            rows.append((s["domain"], s["fixed"], exps))
            steps += [step for step in exps if step not in steps]
    if not rows:
        return []
    steps.sort()
    lines = ["", "## Forgetting's local exponent in N", "",
             "d ln F / d ln N between neighbouring sizes at p = 0, per domain and D (negative: forgetting shrinks "
             "with N; a power law in N has the same exponent at every step).", "",
             "| domain | D | " + " | ".join(f"{a:,.0f} → {b:,.0f}" for a, b in steps) + " |",
             "|---|---|" + "---|" * len(steps)]  # fmt: skip
    for domain, d, exps in rows:
        lines.append(
            f"| {domain} | {d:,.0f} | " + " | ".join(num(exps.get(st), "+.2f") for st in steps) + " |"
        )
    return lines
