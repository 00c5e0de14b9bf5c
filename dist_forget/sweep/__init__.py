"""Sweeps: grid expansion, a resumable local pool, SLURM job arrays, then runs.csv and the law fit."""
