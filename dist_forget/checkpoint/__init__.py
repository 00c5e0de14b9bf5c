"""The on-disk formats of checkpoints, one writer and one reader each (imports neither engine/ nor convert/)."""
