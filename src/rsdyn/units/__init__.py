"""Units stage (rules ``unit_stats_shard``, ``unit_stats_gather``, ``layer_stats``,
``fig1``): per-unit correlations, mutual information and rotations with their nulls
(``correlations``, ``mi``, ``rotations``, ``surrogates``, sharded by ``unit_stats``),
per-sublayer norms, density, cosine and velocity (``layer_stats``), sequence resampling
of the Fig. 1 quantities (``resample``), the Fig. 1 summary rows (``summary``), Fig. 1
(``figure``) and the entries (``run``)."""
