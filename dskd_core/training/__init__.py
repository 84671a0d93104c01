"""The parts of the training loop that `dskd_core.train.run_job` strings together.

- `setup`: the accelerator, pre-flight and construction (models, data, distiller), optimizer, schedule, resume.
- `step`: the micro-batch stream, the step's token counts, forward/backward with gradient accumulation, the
  optimizer update.
- `evaluation`: dev metrics, checkpoints (periodic and best-by-dev-score), the final evaluation and the export.
"""
