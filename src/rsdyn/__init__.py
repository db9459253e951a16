"""rsdyn: residual-stream dynamics of transformer language models.

Every computation of the workflow lives in this package, one module per stage:
``config`` (schema validation), ``models`` (weights), ``corpus``, ``adapters`` (hook
sites per architecture family), ``capture``, ``unit_stats``, ``layer_stats``, ``pca``,
``cae``, ``teleport``, ``figures``, ``summary``; ``store`` holds the zarr I/O.
"""

__version__ = "0.1.0"
