"""Vision tower, connectors, LLM and the VLM that joins them."""
