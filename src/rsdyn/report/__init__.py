"""Report stage (rules ``fig1_summary``, ``summary``, ``compare``): every run's rows in
summary.json and its table, the command line summary (``summary``), the README's
generated blocks (``readme``), and the comparison of runs with its figure (``compare``,
``compare_figure``)."""
