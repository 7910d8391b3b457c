"""Checkpoint files: which files form a checkpoint, how tensors are split into shards, reading and writing."""
