"""autotuner: a distributed, parallel tuner for LLM inference engines, on Ray Tune.

Installed as one package; in the repository its parts are top-level folders (see docs/architecture.md):

- llm_autotuner/ (this folder): the shared vocabulary every layer imports, and nothing of ours
  above it: the task model (task.py), errors (errors.py), metrics and scoring (metrics.py,
  objective.py), how a trial ended (outcome.py).
- cluster/ -> llm_autotuner.cluster: where engines run (engine profiles, local and OME backends).
- trainables/ -> llm_autotuner.trainables: one trial (deploy, benchmark in stages, report, tear down).
- tuner/ -> llm_autotuner.tuner: the driver (CLI, search, results).
- templates/ -> llm_autotuner.templates: Jinja2 manifests.

Each layer imports only the ones listed before it.
"""
