"""CAE stage (rule ``cae``, ``fig3``): the compressing autoencoder and its training
(``model``), its data in memory or streamed by blocks (``data``), the Fig. 3 quantities
(``metrics``), their summary rows (``summary``), Fig. 3 (``figure``) and the entry
(``run``)."""
