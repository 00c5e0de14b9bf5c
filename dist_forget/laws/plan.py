"""The planner: the smallest injection fraction p that keeps predicted forgetting under a budget.

With the paper's forgetting law F(p) = A * D^beta / ((1 + B*p) * N)^alpha, F <= eps has the closed form
p = ((A * D^beta / eps)^(1/alpha) / N - 1) / B, clipped at 0. The same formula applied to every bootstrap
sample in fit.json gives p's 95 % interval. Predictions outside the fitted range of N or D are allowed
(that is the point) but flagged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dist_forget.errors import UserError
from dist_forget.laws.diagnostics import blocking
from dist_forget.laws.forms import Forgetting, get_form

# What runs would lift each diagnostic (dist_forget.laws.diagnostics) from a fit.
FIXES = {
    "param_at_bound": "add runs along the axis that parameter governs (sizes for alpha, D for beta, p for B)",
    "exponent_near_zero": "the effect is absent in these runs; check the study protocol (a ladder trained to "
    ">= 20 tokens per parameter, finetunes that reach the bottom of the U-curve)",
    "ci_too_wide": "add runs (more seeds, or more points along that parameter's axis)",
    "too_few_sizes": "add runs at a third model size",
    "holdout_worse_than_noise": "add runs at sizes nearer the one you plan for, or compare other --forms",
}


def load_fits(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such fit file; run `dist-forget fit --out DIR` and pass DIR/fit.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}); rerun `dist-forget fit`") from None
    if not isinstance(data, dict) or not isinstance(data.get("fits"), list):
        raise UserError(f"{path}: expected an object with a 'fits' list, as written by `dist-forget fit`")
    return data["fits"]


def select(fits: list[dict[str, Any]], domain: str, form: str, where: str = "fit.json") -> dict[str, Any]:
    domains = sorted({f.get("domain") for f in fits})
    if domain not in domains:
        raise UserError(f"{where}: domain {domain!r} is not in the fit; fitted domains: {', '.join(domains)}")
    for rec in fits:
        if rec.get("domain") == domain and rec.get("form") == form:
            return rec
    forms = sorted({f.get("form") for f in fits if f.get("domain") == domain})
    raise UserError(f"{where}: no {form!r} fit for domain {domain!r}; fitted forms there: {', '.join(forms)}")


def _samples(rec: dict[str, Any]) -> list[dict[str, float]]:
    samples = rec.get("bootstrap", {}).get("samples", {})
    names = list(rec["params"])
    count = min((len(samples.get(n, [])) for n in names), default=0)
    rows = [{n: samples[n][i] for n in names} for i in range(count)]
    # fit.json stores a non-finite sample as null; such a resample has no usable law.
    return [{n: float(v) for n, v in r.items()} for r in rows if all(v is not None for v in r.values())]


def _cols(n: float, d: float, p: float, anchor_decay: float) -> dict[str, np.ndarray]:
    return {
        "model_params": np.array([n]),
        "target_tokens": np.array([d]),
        "inject_fraction": np.array([p]),
        "anchor_decay": np.array([anchor_decay]),
        "pt_loss_base": np.array([1.0]),
    }


def _forgetting(form: Forgetting, values: dict[str, float], cols: dict[str, np.ndarray]) -> float:
    return float(form.forgetting(form.to_internal(values), cols)[0])


def _predict(rec: dict[str, Any], values: dict[str, float], cols: dict[str, np.ndarray]) -> float:
    """What the record's form predicts (a loss, or a step for bottom-step) with parameters `values`."""
    form = get_form(rec["form"])
    return float(form.predict(form.to_internal(values), cols)[0])


def _interval(xs: list[float]) -> list[float] | None:
    """2.5 and 97.5 percentiles; a sample that is +inf (budget unreachable there) counts as the largest."""
    ranked = np.sort([x for x in xs if not np.isnan(x)])
    if ranked.size == 0:
        return None
    lo, hi = ranked[int(0.025 * (ranked.size - 1))], ranked[int(np.ceil(0.975 * (ranked.size - 1)))]
    return [float(lo), float(hi)]


def plan(
    fits: list[dict[str, Any]],
    domain: str,
    model_params: float,
    target_tokens: float,
    max_forgetting: float | None = None,
    inject_fraction: float | None = None,
    anchor_decay: float = 0.0,
    ft_form: str = "finetune",
    pt_form: str = "forgetting",
    where: str = "fit.json",
    force: bool = False,
) -> dict[str, Any]:
    """Smallest p with forgetting <= max_forgetting (or predictions at a given inject_fraction).

    Refuses (UserError) when either fit carries a diagnostic warning on a parameter the answer depends
    on, unless `force`: then the answer carries those warnings.
    """
    if (max_forgetting is None) == (inject_fraction is None):
        raise UserError(
            "give exactly one of --max-forgetting EPS (to find p) or --inject-fraction P (to predict)"
        )
    if max_forgetting is not None and not max_forgetting > 0:
        raise UserError(
            f"--max-forgetting {max_forgetting} must be > 0 (nats/token of pt_loss - pt_loss_base)"
        )
    if inject_fraction is not None and not 0 <= inject_fraction <= 1:
        raise UserError(f"--inject-fraction {inject_fraction} must be a fraction in [0, 1] (0.01 = 1 %)")
    for flag, value in (("--model-params", model_params), ("--target-tokens", target_tokens)):
        if not value > 0:
            raise UserError(f"{flag} {value} must be > 0")
    pt_rec, ft_rec = select(fits, domain, pt_form, where), select(fits, domain, ft_form, where)
    form = get_form(pt_rec["form"])
    if not isinstance(form, Forgetting):
        raise UserError(
            f"--pt-form {pt_form!r} is not a forgetting law; use forgetting or forgetting-anchored"
        )
    n, d = float(model_params), float(target_tokens)
    # p and the predicted forgetting come from the forgetting law alone: a warning on one of its parameters
    # (K only with Anchored AdamW) refuses the answer. A warning on the finetune law withholds only the
    # predicted finetune loss, which p does not depend on.
    depends = [name for name in pt_rec["params"] if name != "K" or anchor_decay > 0]
    pt_warnings, ft_warnings = blocking(pt_rec, depends), blocking(ft_rec, list(ft_rec["params"]))
    if pt_warnings and not force:
        w = pt_warnings[0]
        more = f" (and {len(pt_warnings) - 1} more warning(s))" if len(pt_warnings) > 1 else ""
        raise UserError(
            f"{where}: the {pt_rec['form']} fit for {domain!r} cannot answer: {w['code']}: {w['message']}{more}; "
            f"{FIXES.get(w['code'], 'add runs')}, refit, or pass --force to answer anyway"
        )
    give_ft = force or not ft_warnings

    def p_for(values: dict[str, float]) -> float:
        if inject_fraction is not None:
            return float(inject_fraction)
        return form.solve_p(values, n, d, float(max_forgetting), anchor_decay)

    p = p_for(pt_rec["params"])
    reachable = bool(np.isfinite(p) and p <= 1.0)  # p > 1 would need more than all-pretraining data
    if not reachable:
        p = float("inf")  # the budget is not met by any p: no number stands in for the answer
    samples_pt, samples_ft = _samples(pt_rec), _samples(ft_rec)
    p_samples = [p_for(s) for s in samples_pt]
    forget = (
        _forgetting(form, pt_rec["params"], _cols(n, d, p, anchor_decay)) if np.isfinite(p) else float("nan")
    )
    ft = _predict(ft_rec, ft_rec["params"], _cols(n, d, p if np.isfinite(p) else 0.0, anchor_decay))
    reasons = []
    for rec in (pt_rec, ft_rec):
        for col, value in (("model_params", n), ("target_tokens", d)):
            lo, hi = rec.get("range", {}).get(col, [value, value])
            if not lo <= value <= hi and col not in [r.split()[0] for r in reasons]:
                reasons.append(f"{col} {value:.4g} outside fitted [{lo:.4g}, {hi:.4g}]")
    out: dict[str, Any] = {
        "inject_fraction": p,
        "ci95": _interval(p_samples) if inject_fraction is None else [p, p],
        "predicted_forgetting": forget,
        "predicted_ft_loss": ft if give_ft else None,
        "extrapolated": bool(reasons),
        "reachable": reachable,
        "extrapolation": reasons,
        "forgetting_ci95": _interval(
            [_forgetting(form, s, _cols(n, d, p, anchor_decay)) for s in samples_pt] if np.isfinite(p) else []
        ),
        "ft_loss_ci95": _interval(
            [_predict(ft_rec, s, _cols(n, d, p if np.isfinite(p) else 0.0, anchor_decay)) for s in samples_ft]
        )
        if give_ft
        else None,
        "ft_loss_withheld": None if give_ft else f"{ft_warnings[0]['code']}: {ft_warnings[0]['message']}",
        "forgetting_at_p1": _forgetting(form, pt_rec["params"], _cols(n, d, 1.0, anchor_decay)),
        "warnings": [dict(w, form=pt_rec["form"]) for w in pt_warnings]
        + [dict(w, form=ft_rec["form"]) for w in ft_warnings],
        "domain": domain,
        "model_params": n,
        "target_tokens": d,
        "max_forgetting": max_forgetting,
        "pt_form": pt_rec["form"],
        "ft_form": ft_rec["form"],
    }
    return out


def budget_p(
    fits: list[dict[str, Any]], domain: str, model_params: float, target_tokens: float, max_forgetting: float,
    anchor_decay: float = 0.0, where: str = "fit.json",
) -> float:  # fmt: skip
    """The planner's smallest constant p for a budget (inf where no p reaches it), as a run uses it: the
    anchored forgetting law when the run is anchored and the fit has one, and a diagnostic warning on the
    fit does not refuse (an adaptive run corrects a poor start; a comparison shows what the plan gives)."""
    form = "forgetting-anchored" if anchor_decay > 0 else "forgetting"
    if not any(f.get("domain") == domain and f.get("form") == form for f in fits):
        form = "forgetting"
    ans = plan(
        fits, domain, model_params, target_tokens, max_forgetting=max_forgetting, anchor_decay=anchor_decay,
        pt_form=form, ft_form=form, where=where, force=True,
    )  # fmt: skip
    return float(ans["inject_fraction"])


def predict_bottom_step(
    fits: list[dict[str, Any]], domain: str, model_params: float, target_tokens: float
) -> float:
    """The step of the best target evaluation by the fit's `bottom-step` law; nan where it has none for
    the domain. A diagnostic warning does not withhold it: an adaptive run only reads early forgetting by
    it, and its integral term corrects what it misses."""
    rec = next((f for f in fits if f.get("domain") == domain and f.get("form") == "bottom-step"), None)
    if rec is None:
        return math.nan
    return _predict(rec, rec["params"], _cols(model_params, target_tokens, 0.0, 0.0))


def format_plan(result: dict[str, Any]) -> str:
    def ci(v: list[float] | None, fmt: str) -> str:
        return f"[{v[0]:{fmt}}, {v[1]:{fmt}}]" if v else "n/a"

    lines = [
        f"domain {result['domain']}: N = {result['model_params']:.4g}, D = {result['target_tokens']:.4g}"
    ]
    lines += [
        f"WARNING {w['form']}: {w['code']}: {w['message']}"
        for w in result["warnings"]
        if w["form"] == result["pt_form"]
    ]  # only --force gets here with these
    if result["max_forgetting"] is not None and not result["reachable"]:
        lines.append(
            f"not reachable by injection alone at N={result['model_params']:.4g}, "
            f"D={result['target_tokens']:.4g}: predicted forgetting at p = 100 % is "
            f"{result['forgetting_at_p1']:.4g} nats/token (budget {result['max_forgetting']:g})"
        )
        if result["extrapolated"]:  # the p = 100 % figure is a law's prediction outside what it was fitted on
            lines.append("EXTRAPOLATED: " + "; ".join(result["extrapolation"]))
        return "\n".join(lines)
    if result["max_forgetting"] is not None:
        p = result["inject_fraction"]
        lo_hi = result["ci95"]
        hi_txt = (
            "unreachable"
            if lo_hi and not np.isfinite(lo_hi[1])
            else f"{100 * lo_hi[1]:.3g} %"
            if lo_hi
            else ""
        )
        ci_txt = f"[{100 * lo_hi[0]:.3g} %, {hi_txt}]" if lo_hi else "n/a"
        lines.append(
            f"smallest p with forgetting <= {result['max_forgetting']:g} nats/token: {p:.4g} ({100 * p:.3g} %), "
            f"95 % CI {ci_txt}"
        )
    else:
        lines.append(f"at p = {result['inject_fraction']:.6g}:")
    lines.append(
        f"predicted forgetting (pt_loss - pt_loss_base): {result['predicted_forgetting']:.5g} nats/token, "
        f"95 % CI {ci(result['forgetting_ci95'], '.5g')}"
    )
    if result["predicted_ft_loss"] is None:
        lines.append(
            f"predicted finetune loss: withheld, the {result['ft_form']} fit carries "
            f"{result['ft_loss_withheld']}"
        )
    else:
        lines.append(
            f"predicted finetune loss: {result['predicted_ft_loss']:.5g} nats/token, "
            f"95 % CI {ci(result['ft_loss_ci95'], '.5g')}"
        )
    if result["extrapolated"]:
        lines.append("EXTRAPOLATED: " + "; ".join(result["extrapolation"]))
    return "\n".join(lines)
