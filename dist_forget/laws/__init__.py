"""Scaling laws for finetuning and forgetting: fit, bootstrap, validate small -> large, plan p.

numpy/scipy/matplotlib only (mlflow lazily for --mlflow): fitting must work without torch installed.

Public API:
- `table.read_runs(path)` -> `Runs` (CSV, Parquet, one summary.json or a directory tree of them);
  `table.read_mlflow(experiment)`.
- `forms.FORMS` / `forms.get_form(name)`: finetune, finetune-power, forgetting, chinchilla,
  finetune-eff-data, finetune-eff-params, forgetting-anchored.
- `fit.fit_form(form, runs, FitConfig())` -> `PointFit`; `pipeline.fit_runs(runs, forms, cfg, holdout)`
  -> fit.json records; `report.write_outputs(out, records, runs, meta)`.
- `plan.plan(fits, domain, N, D, max_forgetting=eps | inject_fraction=p)`.
CLI: `dist-forget fit`, `dist-forget plan` (laws/commands.py).
"""
