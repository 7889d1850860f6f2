"""Training flows: one step and the fit loop (`fit`), runs as data (`config`), the trainer (`train`) with
its checkpoints, stop signals and data parallelism, the chapters' `runs.run_or_load`, the command line
(``python -m flowlib.training``) and `rescore`. Imports the layers; no layer imports it."""
