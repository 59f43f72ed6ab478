"""The search wing: the driver interface (:mod:`.driver`) and its backends by name (:mod:`.backends`: Optuna worker
processes, Ray Tune), the study's storage (:mod:`.storage`), the Optuna objective (:mod:`.objective`), the
optuna-dashboard notes and artifacts (:mod:`.dashboard`), the report of a study's trials (:mod:`.report`) and an
exported trial's file (:mod:`.provenance`)."""
