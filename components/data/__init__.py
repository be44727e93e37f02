"""Embedded datasets, WebDataset shard writing and rank-aware shard reading."""
