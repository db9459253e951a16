"""Geometry stage (rules ``pca``, ``teleport_layer``, ``teleport_gather``, ``fig4``):
PCA of the pooled states (``pca``) and of each sublayer's own states (``sublayer_pca``),
teleportation into a layer (``teleport``, its grid ``teleport_grid`` and its recovery
metrics and rows ``teleport_metrics``), the PCA rows (``pca_summary``), Fig. 4
(``figure``, ``pca_figure``) and the entries (``run``)."""
