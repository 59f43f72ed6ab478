"""The search and the user's commands: the study file (:mod:`nas.study`), the steps as functions
(:mod:`nas.pipeline`: profile, fit-latency, pretrain, supernet, search, refine, report, export, finetune), and its
wings: :mod:`nas.cli` (the ``nas`` command), :mod:`nas.search` (the Optuna and Ray drivers, storage, the refine's
jobs, dashboard notes, report) and :mod:`nas.training` (data, trainer, teacher, supernet, checkpoints)."""
