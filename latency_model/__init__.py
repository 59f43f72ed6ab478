"""How fast a config will run: the measurement table (db), the op decomposition shared by profiling and prediction
(ops), module timing (timing), profiling a study's space (profile) and the fitted predictor (predictor)."""
