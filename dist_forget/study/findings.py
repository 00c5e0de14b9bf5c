"""The paper's findings, checked on a runs table with plain numbers (no law is fitted here).

Forgetting F = pt_loss - pt_loss_base (nats/token): how much the pretraining validation loss rose by the
best target checkpoint. Each comparison pairs runs that differ in exactly one knob (same domain, size,
D, seed, and the others fixed), so a difference is that knob's effect and nothing else. Seed noise is
measured separately (`noise_floor`) and every verdict is read against it.

Every verdict and the threshold it is read against are computed here, into findings.json (`collect`);
the reports (study/report.py, study/adaptive.py) only render them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq

from dist_forget.laws.table import Runs

# a share of paired comparisons: at least SHARE_HOLDS agree -> "holds", at most SHARE_FAILS -> "does not hold"
SHARE_HOLDS, SHARE_FAILS = 0.75, 0.25
# finding 3 ("p = 1 % removes most forgetting"): the mean share of forgetting removed at HEADLINE_P
HEADLINE_P = 0.01
REMOVED_HOLDS, REMOVED_PARTLY = 0.5, 0.25
# "does not hurt the target loss": the mean relative increase of the best target loss at most 0.5 %
FT_TOLERANCE = 0.005
# `study adaptive`: the share of adaptive runs that must end with forgetting <= their budget ε
BUDGET_HELD_GOAL = 0.9
# held-out MRE the study aims at, per law (the paper reached 2.01 % and 0.83 %)
HELDOUT_GOAL = {"finetune": 0.015, "forgetting": 0.006}
# the injection strength B implied by the forgetting ratios at two fractions, searched in this bracket:
# a root at its edge is a bound, not a value
IMPLIED_P = (0.01, 0.05)
B_BRACKET = (1e-3, 1e8)
# the ladder walk's goal: held-out MRE on the largest size within this many times the seed floor
FLOOR_GOAL_RATIO = 1.5
# E|x| / σ for normal noise: the mean relative error of a law that predicts every expected loss exactly
ABS_NORMAL = math.sqrt(2 / math.pi)


@dataclass(frozen=True)
class Run:
    name: str
    domain: str
    n: float  # non-embedding parameters
    d: float  # unique target tokens
    p: float  # injection fraction
    a: float  # anchor_decay
    seed: int
    ft: float  # target validation loss at the best checkpoint
    pt: float  # pretraining validation loss there
    pt0: float  # pretraining validation loss of the base model

    @property
    def forgetting(self) -> float:
        return self.pt - self.pt0


def runs_of(table: Runs) -> list[Run]:
    v = table.values
    names = table.extra.get("name", table.run_id)
    seeds = table.extra.get("seed", [0] * len(table))
    return [
        Run(
            name=str(names[i]),
            domain=str(table.domain[i]),
            n=float(v["model_params"][i]),
            d=float(v["target_tokens"][i]),
            p=float(v["inject_fraction"][i]),
            a=float(v["anchor_decay"][i]),
            seed=int(float(seeds[i] if seeds[i] not in ("", None) else 0)),
            ft=float(v["ft_loss"][i]),
            pt=float(v["pt_loss"][i]),
            pt0=float(v["pt_loss_base"][i]),
        )
        for i in range(len(table))
    ]


def _index(runs: Iterable[Run]) -> dict[tuple[str, float, float, float, float, int], Run]:
    return {(r.domain, r.n, r.d, r.p, r.a, r.seed): r for r in runs}


def verdict(share: float) -> str:
    """'holds' when at least 3 of 4 paired comparisons agree with the paper, 'does not hold' at 1 in 4 or
    fewer, 'mixed' between."""
    if not math.isfinite(share):
        return "not measured"
    return "holds" if share >= SHARE_HOLDS else "does not hold" if share <= SHARE_FAILS else "mixed"


def removal_verdict(removed: float) -> str:
    """Finding 3 on the mean share of forgetting removed: most (half or more), partly (a quarter), or not."""
    return (
        "holds"
        if removed >= REMOVED_HOLDS
        else "partly holds"
        if removed >= REMOVED_PARTLY
        else "does not hold"
    )


def ft_verdict(ft_change_mean: float) -> str:
    """Finding 4: injection does not hurt the target loss when its mean relative change is within
    FT_TOLERANCE."""
    return "holds" if ft_change_mean <= FT_TOLERANCE else "does not hold"


def trend(runs: list[Run], along: str, decreasing: bool, p: float = 0.0) -> dict[str, Any]:
    """Forgetting along `along` ("n" or "d") with everything else fixed (plain AdamW, injection p, seed 0).

    Returns one series per fixed setting ({domain, fixed: the other of N or D, points: {x: F}}), and the share of series whose endpoints move
    the way the paper says (F at the largest x below F at the smallest when `decreasing`, above when not),
    plus the mean ratio F(largest x) / F(smallest x).
    """
    series: dict[tuple, dict[float, float]] = defaultdict(dict)
    for r in runs:
        if r.p == p and r.a == 0 and r.seed == 0:
            fixed = (r.domain, r.d) if along == "n" else (r.domain, r.n)
            series[fixed][getattr(r, along)] = r.forgetting
    agree, ratios = [], []
    for points in series.values():
        if len(points) < 2:
            continue
        lo, hi = points[min(points)], points[max(points)]
        agree.append(hi < lo if decreasing else hi > lo)
        if lo > 0 and hi > 0:
            ratios.append(hi / lo)
    share = float(np.mean(agree)) if agree else float("nan")
    return {
        "series": [
            {"domain": k[0], "fixed": k[1], "points": dict(sorted(v.items()))}
            for k, v in sorted(series.items())
        ],
        "share_agreeing": share,
        "n_series": len(agree),
        "mean_ratio_last_first": float(np.mean(ratios)) if ratios else float("nan"),
        "verdict": verdict(share),
    }


def local_exponents(points: dict[float, float]) -> dict[tuple[float, float], float]:
    """d ln y / d ln N between neighbouring sizes of one series {N: y}; a step with y <= 0 at either end has
    no logarithm and is left out."""
    sizes = sorted(points)
    return {(a, b): math.log(points[b] / points[a]) / math.log(b / a)
            for a, b in zip(sizes, sizes[1:]) if points[a] > 0 and points[b] > 0}  # fmt: skip


def injection_effect(runs: list[Run], p: float) -> dict[str, Any]:
    """Runs at injection p against the same run at p = 0: the share of forgetting removed,
    1 - F(p)/F(0), and the relative change of the target loss, ft(p)/ft(0) - 1."""
    idx = _index(runs)
    pairs = []
    for r in runs:
        if r.p != p or r.a != 0:
            continue
        base = idx.get((r.domain, r.n, r.d, 0.0, 0.0, r.seed))
        if base is None:
            continue
        removed = 1 - r.forgetting / base.forgetting if base.forgetting > 0 else float("nan")
        pairs.append({"run": r.name, "forgetting_p0": base.forgetting, "forgetting": r.forgetting,
                      "forgetting_removed": removed, "ft_change": r.ft / base.ft - 1})  # fmt: skip
    removed = np.array([x["forgetting_removed"] for x in pairs], dtype=float)
    ft = np.array([x["ft_change"] for x in pairs], dtype=float)
    return {
        "p": p,
        "pairs": pairs,
        "n_pairs": len(pairs),
        "forgetting_removed_mean": float(np.nanmean(removed)) if len(pairs) else float("nan"),
        "forgetting_removed_min": float(np.nanmin(removed)) if len(pairs) else float("nan"),
        "forgetting_removed_max": float(np.nanmax(removed)) if len(pairs) else float("nan"),
        # more than all of it: the pretraining loss ended below the base model's, so the injected data also
        # taught the distribution forgetting is measured on (the base model was not trained to its end on it)
        "n_removed_above_all": int(np.sum(removed > 1)),
        "ft_change_mean": float(ft.mean()) if len(pairs) else float("nan"),
        "ft_change_max": float(ft.max()) if len(pairs) else float("nan"),
        "share_ft_not_worse": float(np.mean(ft <= 0)) if len(pairs) else float("nan"),
    }


def implied_strength(r1: float, r2: float, p1: float, p2: float) -> tuple[float, float, str]:
    """B and α of the forgetting law's (1 + B·p)^−α from r(p) = F(p)/F(0) at p1 < p2, or (nan, nan, why not).

    ln r1 / ln r2 = ln(1 + B·p1) / ln(1 + B·p2) =: g(B), which rises from p1/p2 (B → 0) to 1 (B → ∞), so
    one pair of ratios fixes B (root of g in B_BRACKET, on log B) and then α. Outside that range the law
    cannot produce the two ratios at any finite, positive B.
    """
    lo, hi = B_BRACKET
    at = f"p = {100 * p1:g} %", f"p = {100 * p2:g} %"
    if not (math.isfinite(r1) and math.isfinite(r2)):
        return math.nan, math.nan, "no forgetting at p = 0 to compare with"
    if r1 <= 0 or r2 <= 0:
        return math.nan, math.nan, f"forgetting at {at[0] if r1 <= 0 else at[1]} is not above 0"
    if r1 >= 1:
        return math.nan, math.nan, f"{at[0]} removed nothing"
    if r2 >= r1:
        return math.nan, math.nan, f"{at[1]} removed no more than {at[0]}"
    target = math.log(r1) / math.log(r2)

    def g(log_b: float) -> float:
        b = math.exp(log_b)
        return math.log1p(b * p1) / math.log1p(b * p2) - target

    # g is monotone: a sign that does not change inside the bracket puts the root on or beyond an edge
    if g(math.log(lo)) >= 0:
        why = f"the B → 0 limit or beyond: ln r at {at[1]} is ≥ {p2 / p1:g}× that at {at[0]}"
        why += f"; no B above {lo:g} fits"
        return math.nan, math.nan, why
    if g(math.log(hi)) <= 0:
        why = f"the B → ∞ limit: {at[1]} removed barely more than {at[0]} ; no B below {hi:g} fits"
        return math.nan, math.nan, why
    b = math.exp(brentq(g, math.log(lo), math.log(hi), xtol=1e-14, rtol=1e-15))
    return b, -math.log(r1) / math.log1p(b * p1), ""


def implied_injection_strength(
    runs: list[Run], p1: float = IMPLIED_P[0], p2: float = IMPLIED_P[1]
) -> dict[str, Any]:
    """The B and α implied at each (domain, N, D, seed) with plain-AdamW runs at p = 0, p1 and p2: a law
    without fitting one over sizes, so it reads at a single N (and shows how B moves with N on a ladder).

    Where several seeds have all three runs, one more record uses their mean forgetting (`seed` None).
    The summaries per size and per (size, domain) count one record per (domain, N, D): the seed mean
    where there is one, else the single seed.
    """
    idx = _index(runs)
    triples: dict[tuple[str, float, float], dict[int, tuple[float, float, float]]] = defaultdict(dict)
    for r in runs:
        at = [idx.get((r.domain, r.n, r.d, p, 0.0, r.seed)) for p in (p1, p2)]
        if r.p == 0 and r.a == 0 and all(at):
            triples[(r.domain, r.n, r.d)][r.seed] = (r.forgetting, at[0].forgetting, at[1].forgetting)

    def record(key: tuple[str, float, float], seeds: list[int], f: np.ndarray) -> dict[str, Any]:
        f0, f1, f2 = (float(x) for x in f)
        r1, r2 = (f1 / f0, f2 / f0) if f0 > 0 else (math.nan, math.nan)
        b, alpha, reason = implied_strength(r1, r2, p1, p2)
        return {"domain": key[0], "model_params": key[1], "target_tokens": key[2],
                "seed": seeds[0] if len(seeds) == 1 else None, "seeds": seeds, "forgetting_p0": f0,
                "ratio_p1": r1, "ratio_p2": r2, "p1": p1, "p2": p2, "B": b, "alpha": alpha,
                "identified": not reason, "reason": reason}  # fmt: skip

    records, counted = [], []
    for key, by_seed in sorted(triples.items()):
        seeds = sorted(by_seed)
        records += [record(key, [s], np.array(by_seed[s])) for s in seeds]
        if len(seeds) > 1:
            records.append(record(key, seeds, np.mean([by_seed[s] for s in seeds], axis=0)))
        counted.append(records[-1])

    def summary(sel: list[dict[str, Any]]) -> dict[str, Any]:
        b = [x["B"] for x in sel if x["identified"]]
        alpha = [x["alpha"] for x in sel if x["identified"]]
        stat = lambda f, xs: float(f(xs)) if xs else math.nan  # noqa: E731
        return {"n": len(sel), "n_identified": len(b), "B_median": stat(np.median, b), "B_min": stat(min, b),
                "B_max": stat(max, b), "alpha_median": stat(np.median, alpha)}  # fmt: skip

    sizes = sorted({x["model_params"] for x in counted})
    return {
        "p1": p1,
        "p2": p2,
        "bracket": list(B_BRACKET),
        "records": records,
        "by_size": [
            {"model_params": n, **summary([x for x in counted if x["model_params"] == n])} for n in sizes
        ],
        "by_size_domain": [
            {
                "model_params": n,
                "domain": dom,
                **summary([x for x in counted if (x["model_params"], x["domain"]) == (n, dom)]),
            }
            for n in sizes
            for dom in sorted({x["domain"] for x in counted if x["model_params"] == n})
        ],
    }


def slice_findings(runs: list[Run], source: str, proto: dict[str, Any]) -> dict[str, Any]:
    """Finding 3 with forgetting measured on a held-out slice (`runs` carry the slice's losses as pt and pt0):
    the share removed at each p, the implied B, and the verdict beside the one on the runs' own set."""
    ps = sorted({r.p for r in runs if r.p > 0})
    injection = {str(p): injection_effect(runs, p) for p in ps}
    name = {r.name: r for r in runs}
    for e in injection.values():
        for pair in e["pairs"]:
            pair |= {"domain": name[pair["run"]].domain, "target_tokens": name[pair["run"]].d}
    headline = injection.get(str(HEADLINE_P), {"n_pairs": 0})
    return {
        "source": source,
        "n_runs": len(runs),
        "injection": injection,
        "implied_injection_strength": implied_injection_strength(runs),
        "verdict": removal_verdict(headline["forgetting_removed_mean"])
        if headline["n_pairs"]
        else "not measured",
        "undermined": "injection" in set(proto.get("undermined", ())),
    }


def anchored_vs_injection(runs: list[Run]) -> dict[str, Any]:
    """Each Anchored AdamW run (p = 0) against the plain-AdamW run of the same domain, size, D and seed,
    at any p, whose target loss is closest: at (nearly) equal target loss, which forgets less?"""
    pairs = []
    for r in runs:
        if r.a == 0 or r.p != 0:
            continue
        rivals = [
            x for x in runs if x.a == 0 and (x.domain, x.n, x.d, x.seed) == (r.domain, r.n, r.d, r.seed)
        ]
        if not rivals:
            continue
        best = min(rivals, key=lambda x: abs(x.ft - r.ft))
        pairs.append({
            "run": r.name, "anchor_decay": r.a, "ft": r.ft, "forgetting": r.forgetting,
            "rival": best.name, "rival_p": best.p, "rival_ft": best.ft, "rival_forgetting": best.forgetting,
            "ft_gap": r.ft / best.ft - 1, "forgetting_diff": r.forgetting - best.forgetting,
        })  # fmt: skip
    by_decay: dict[str, dict[str, float]] = {}
    for a in sorted({x["anchor_decay"] for x in pairs}):
        sel = [x for x in pairs if x["anchor_decay"] == a]
        diff = np.array([x["forgetting_diff"] for x in sel])
        by_decay[str(a)] = {  # keyed as findings.json keys it, like `anchor`
            "n_pairs": len(sel),
            "forgetting_diff_mean": float(diff.mean()),
            "share_anchor_forgets_less": float(np.mean(diff < 0)),
            "ft_gap_mean_abs": float(np.mean([abs(x["ft_gap"]) for x in sel])),
        }
    return {"pairs": pairs, "by_anchor_decay": by_decay}


def anchor_effect(runs: list[Run]) -> dict[float, dict[str, float]]:
    """Anchored AdamW at p = 0 against plain AdamW at p = 0 (same domain, size, D, seed): forgetting
    removed and target-loss change, averaged per anchor_decay."""
    idx = _index(runs)
    out: dict[float, dict[str, float]] = {}
    for a in sorted({r.a for r in runs if r.a > 0}):
        removed, ft = [], []
        for r in runs:
            base = idx.get((r.domain, r.n, r.d, 0.0, 0.0, r.seed))
            if r.a != a or r.p != 0 or base is None or base.forgetting <= 0:
                continue
            removed.append(1 - r.forgetting / base.forgetting)
            ft.append(r.ft / base.ft - 1)
        if removed:
            out[a] = {"n_pairs": len(removed), "forgetting_removed_mean": float(np.mean(removed)),
                      "ft_change_mean": float(np.mean(ft))}  # fmt: skip
    return out


def noise_floor(runs: list[Run]) -> list[dict[str, Any]]:
    """Configurations run with 3 or more seeds: mean and relative standard deviation (ddof = 1) of the
    target loss, pretraining loss and forgetting across seeds."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.domain, r.n, r.d, r.p, r.a)].append(r)
    out = []
    for (domain, n, d, p, a), rs in sorted(groups.items()):
        if len({r.seed for r in rs}) < 3:
            continue
        row: dict[str, Any] = {"domain": domain, "model_params": n, "target_tokens": d, "inject_fraction": p,
                               "anchor_decay": a, "seeds": sorted(r.seed for r in rs)}  # fmt: skip
        for key, vals in (("ft", [r.ft for r in rs]), ("pt", [r.pt for r in rs]),
                          ("forgetting", [r.forgetting for r in rs])):  # fmt: skip
            arr = np.array(vals)
            row[f"{key}_mean"] = float(arr.mean())
            row[f"{key}_rel_std"] = float(arr.std(ddof=1) / abs(arr.mean()))
        out.append(row)
    return out


def same_as_p0(runs: list[Run], p: float) -> list[dict[str, Any]]:
    """Runs at injection p against the same run at p = 0: the largest absolute loss difference. A stream
    too short to contain one pretraining sequence at this p must give exactly 0."""
    idx = _index(runs)
    out = []
    for r in runs:
        base = idx.get((r.domain, r.n, r.d, 0.0, r.a, r.seed))
        if r.p == p and base is not None:
            out.append({"run": r.name, "ft_diff": abs(r.ft - base.ft), "pt_diff": abs(r.pt - base.pt)})
    return out


def heldout_mre(record: dict[str, Any]) -> float:
    """A fit record's held-out MRE (nan when it was not checked on a held-out size)."""
    return (record.get("holdout") or {}).get("mre", float("nan"))


def mean_heldout(records: list[dict[str, Any]], form: str) -> float:
    """A form's held-out MRE averaged over the domains (nan when it has none)."""
    vals = [heldout_mre(r) for r in records if r["form"] == form]
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")


def heldout(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each form's mean held-out MRE, and per law the best form against the study's goal (HELDOUT_GOAL)."""
    by_form = {form: mean_heldout(records, form) for form in dict.fromkeys(r["form"] for r in records)}
    best = {}
    for law, goal in HELDOUT_GOAL.items():
        forms = dict.fromkeys(r["form"] for r in records if r["law"] == law)
        scored = [(f, by_form[f]) for f in forms]
        form, mre = min(
            scored, key=lambda x: x[1] if np.isfinite(x[1]) else math.inf, default=("–", math.inf)
        )
        best[law] = {"form": form, "mre": mre, "goal": goal, "reached": bool(mre <= goal)}
    return {"mre_by_form": by_form, "best": best}


def seed_sigma(noise: list[dict[str, Any]], size: float, law: str) -> float:
    """The relative seed std of the loss a law predicts at one size, averaged over its seeded configurations
    (nan where none is measured): ft_loss for the finetune law, pt_loss for the forgetting law."""
    key = {"finetune": "ft_rel_std", "forgetting": "pt_rel_std"}.get(law)
    vals = [nf[key] for nf in noise if key and nf["model_params"] == size]
    return float(np.mean(vals)) if vals else math.nan


def ladder_summary(walk: list[dict[str, Any]], noise: list[dict[str, Any]]) -> dict[str, Any]:
    """Per law and held-out size: the best form's held-out MRE (mean over domains) beside the seed floor.

    Best = the form with the lowest held-out MRE averaged over the domains, among the forms walked at that
    size on every domain, chosen per law and size. Floor = the expected MRE of a perfect law on the same
    held-out runs: 0.8 σ (E|x| of normal noise) times the mean of 1/√m over them, m the seeds a point averages
    (1 for single runs), σ the relative seed std measured at that size.
    """
    domains = sorted({w["domain"] for w in walk})
    out = []
    for law in dict.fromkeys(w["law"] for w in walk):
        for size in sorted({w["model_params"] for w in walk if w["law"] == law}):
            at = [w for w in walk if (w["law"], w["model_params"]) == (law, size)]
            by_form = {f: [w for w in at if w["form"] == f] for f in dict.fromkeys(w["form"] for w in at)}
            full = {f: ws for f, ws in by_form.items() if len(ws) == len(domains)}
            if not full:
                continue
            form = min(full, key=lambda f: np.mean([w["mre"] for w in full[f]]))
            best = full[form]
            mre = float(np.mean([w["mre"] for w in best]))
            shrink = float(np.mean([np.mean(1 / np.sqrt(w["n_seeds"])) for w in best]))
            sigma = seed_sigma(noise, size, law)
            floor = ABS_NORMAL * sigma * shrink
            out.append({"law": law, "model_params": size, "k": best[0]["k"], "sizes_fitted": best[0]["sizes_fitted"],
                        "best_form": form, "mre": mre, "mre_by_form": {f: float(np.mean([w["mre"] for w in ws]))
                        for f, ws in full.items()}, "seed_rel_std": sigma, "floor": floor,
                        "ratio_to_floor": mre / floor if floor > 0 else math.nan})  # fmt: skip
    goal = {}
    for law in dict.fromkeys(s["law"] for s in out):
        top = max((s for s in out if s["law"] == law), key=lambda s: s["model_params"])
        goal[law] = {"model_params": top["model_params"], "ratio_to_floor": top["ratio_to_floor"],
                     # None: no seed floor measured at that size, so the goal cannot be checked
                     "reached": bool(top["ratio_to_floor"] <= FLOOR_GOAL_RATIO)
                     if math.isfinite(top["ratio_to_floor"]) else None}  # fmt: skip
    return {"records": walk, "summary": out, "goal_ratio": FLOOR_GOAL_RATIO, "goal": goal}


def collect(
    runs: list[Run], proto: dict[str, Any], records: list[dict[str, Any]], walk: list[dict[str, Any]] = ()
) -> dict[str, Any]:
    """findings.json: the paired comparisons, the law fits' held-out error against the goal, the ladder walk
    (`walk`: laws.pipeline.walk_runs's records) against the seed floor, the protocol check (protocol.check)
    and every verdict, each with `undermined` when a failed protocol check leaves it without one (the
    verdict is then what the runs alone would say)."""
    ps = sorted({r.p for r in runs if r.p > 0})
    facts: dict[str, Any] = {
        "forgetting_vs_size": trend(runs, "n", decreasing=True),
        "forgetting_vs_data": trend(runs, "d", decreasing=False),
        "injection": {str(p): injection_effect(runs, p) for p in ps},
        "anchor": {str(a): v for a, v in anchor_effect(runs).items()},
        "anchored_vs_injection": anchored_vs_injection(runs),
        "noise_floor": noise_floor(runs),
        "same_as_p0": {str(p): same_as_p0(runs, p) for p in ps},
        "protocol": proto,
    }
    undermined = set(proto.get("undermined", ()))

    def stated(finding: str, v: str) -> dict[str, Any]:
        return {"verdict": v, "undermined": finding in undermined}

    verdicts: dict[str, Any] = {
        "forgetting_vs_size": stated("forgetting_vs_size", facts["forgetting_vs_size"]["verdict"]),
        "forgetting_vs_data": stated("forgetting_vs_data", facts["forgetting_vs_data"]["verdict"]),
    }
    headline = facts["injection"].get(str(HEADLINE_P))
    if headline and headline["n_pairs"]:
        verdicts["injection"] = stated("injection", removal_verdict(headline["forgetting_removed_mean"]))
    verdicts["ft_not_hurt"] = {
        key: stated("ft_not_hurt", ft_verdict(e["ft_change_mean"]))
        for key, e in facts["injection"].items()
        if e["n_pairs"]
    }
    facts["heldout"] = heldout(records)
    facts["heldout"]["undermined"] = "laws" in undermined
    facts["ladder_walk"] = ladder_summary(list(walk), facts["noise_floor"])
    facts["ladder_walk"]["undermined"] = "laws" in undermined
    # finding 3's runs read through the law: context for finding 3, so undermined with it
    facts["implied_injection_strength"] = implied_injection_strength(runs)
    facts["implied_injection_strength"]["undermined"] = "injection" in undermined
    facts["verdicts"] = verdicts
    facts["thresholds"] = {
        "share_holds": SHARE_HOLDS, "share_does_not_hold": SHARE_FAILS, "headline_p": HEADLINE_P,
        "removed_holds": REMOVED_HOLDS, "removed_partly_holds": REMOVED_PARTLY, "ft_tolerance": FT_TOLERANCE,
        "heldout_goal": HELDOUT_GOAL,
    }  # fmt: skip
    return facts
