"""Population stage (rules ``population``, ``fig2``): jPCA (``jpca``) against
tensor-maximum-entropy surrogates (``tme``), per depth window and for every unit
(``population``), the rotation rows of Fig. 2, single units and population
(``summary``), Fig. 2 (``figure``) and the entry (``run``)."""
