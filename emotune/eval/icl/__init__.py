"""In-context learning: TopK retrieval of demonstrations, PPL scoring of the label prompts, MMLU 5-shot."""
