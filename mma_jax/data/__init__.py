"""Data: the built-in shapes benchmark, tokenizer + chat template, Grain pipeline."""
