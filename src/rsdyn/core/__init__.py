"""What every stage uses: zarr stores written atomically (``store``), errors, job logs and
progress lines (``jobs``), the config's JSON schema (``schema``), PCA solvers (``linalg``),
bootstrap intervals, verdicts and the early and late thirds they compare (``verdicts``), thread counts (``threads``) and figure
helpers (``figures``). Imports nothing else of rsdyn."""
