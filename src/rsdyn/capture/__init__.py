"""Capture stage (rules ``corpus``, ``cae_corpus``, ``capture_shard``, ``capture``): the
corpus file (``corpus``), the residual stream of the last real token at every sublayer
(``capture``), the shards, datasets and store layout (``settings``), and the entries that
write ``corpus.npz`` and ``activations.zarr`` (``run``)."""
