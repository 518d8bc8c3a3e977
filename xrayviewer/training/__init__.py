"""Training engine: cached base features, head fine-tuning, honest metrics. Imports no Qt."""
