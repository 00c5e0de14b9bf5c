"""MLflow tracking: rank 0 only, batched in a background thread, JSONL fallback, `track sync`."""

from dist_forget.tracking.config import TrackingConfig
from dist_forget.tracking.tracker import Tracker

__all__ = ["TrackingConfig", "Tracker"]
