"""Training: engines (plain torch, DDP, DeepSpeed), the Ray Train runner, recipes (one per model)."""
