"""Evaluation: prompts from benchmark rows, decoding with the training mask, VLMEvalKit-exact
scoring. runner.run_benchmark is the one path of every evaluation; __main__ is the CLI."""
