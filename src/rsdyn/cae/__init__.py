"""CAE stage (rule ``cae``, ``fig3``): the compressing autoencoder and its single-seed
training (``model``), several training seeds trained at once as one batched model
(``batched``), its data in memory, on the device or streamed by blocks (``data``), the
test-set evaluation per seed and test sequence (``evaluate``), the Fig. 3 quantities and
their weighted, seed-resampled statistics (``metrics``), their summary rows
(``summary``), Fig. 3 (``figure``) and the entry (``run``)."""
