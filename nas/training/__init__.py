"""The training wing: the data sources and splits (:mod:`.data`, the generated :mod:`.shapes_dataset`), the trainer
and its losses (:mod:`.trainer`), the dense teacher (:mod:`.teacher`), the weight-sharing supernet's training
(:mod:`.supernet_trainer`), one candidate scored (:mod:`.evaluator`) and weight files (:mod:`.checkpoints`)."""
