"""Open-ended generation: unbiased batch-invariant sampling, MAUVE, ROUGE, perplexity and cross-entropy metrics."""
