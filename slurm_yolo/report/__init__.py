"""The portal: a static site built from the index and the archives, and the MLflow bridge.

The top display layer: it reads through ``catalog`` and ``archive`` and nothing imports it
but ``slurm_yolo.cli``. Modules:

- :mod:`~slurm_yolo.report.pages`: pure functions, index records and archived files in, page
  data and inline SVG charts out (no I/O);
- :mod:`~slurm_yolo.report.build`: reads the store, renders the Jinja2 templates
  (autoescaped), keeps the incremental build state, publishes into the bucket;
- :mod:`~slurm_yolo.report.serve`: a loopback HTTP server for a built site;
- :mod:`~slurm_yolo.report.mlflow_sync`: registers archived runs in an MLflow server;
- :mod:`~slurm_yolo.report.cli`: the ``report`` and ``mlflow`` commands.
"""
