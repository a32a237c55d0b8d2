"""The built-in shapes benchmark: generated scenes and questions (generate) prepared once as a
TFDS ArrayRecord dataset (builder) that Grain reads. No download."""
