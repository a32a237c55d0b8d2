"""Training: the step (step), the loop around it (loop.train_and_evaluate), the optimizer and
the per-device memory estimate."""
