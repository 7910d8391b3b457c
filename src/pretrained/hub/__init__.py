"""Turning a folder or a Hub repo id into local files (huggingface_hub does the traffic and the cache)."""
