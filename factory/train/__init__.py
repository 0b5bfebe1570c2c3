"""Training: engines (plain torch here; DeepSpeed wrapped by the runner), recipes (one per model)."""
