"""Data: the shard reader and writer (``shards``, ``writer``, ``manifest``, ``splits``, ``batching``),
one module per data type meeting the dataset contract (``contract``), and the registry of those
modules with :func:`components.data.registry.open_split`, which reads a split batched by the
module that wrote it. This package imports nothing: a module of it pulls in no other by being
imported, so the reader's closure holds no dataset module and no registry.
"""
