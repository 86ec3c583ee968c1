"""Hugging Face models: hub client, transfers into the cache, download jobs, the local catalog."""
