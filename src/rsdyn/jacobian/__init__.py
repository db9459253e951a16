"""Jacobian stage (rules ``jacobian``, ``fig5``; beyond the paper): exact Jacobians of the
sublayer maps (``jacobian``), their spectra (``spectra``), the summary rows
(``summary``), Fig. 5 (``figure``) and the entry (``run``)."""
