"""The embedded demo's synthetic language (exactly known distribution), its tokenizer and its oracle metrics."""
