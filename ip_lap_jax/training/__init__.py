"""Training: state and optimisers, pmapped train/eval steps per stage, checkpoints, metrics."""
