"""emotune: continual fine-tuning of causal LMs with EMO on DeepSpeed ZeRO-3, evaluated by in-context learning."""

__version__ = "0.1.0"
