"""The user attributes that stored trials and studies carry: one schema, written by both search backends and read by
export, report and the tests. Optuna stores each value as JSON.

A name here is the contract with every study already stored: renaming one orphans the stored value (``nas report``
skips trials without :data:`SEARCH_ACCURACY`, for example), so a rename needs a note in README.
"""

from __future__ import annotations

# ---- what a trial found (nas.training.evaluator.TrialResult.user_attrs) ------------------------------------------
CONFIG = "config"  # the ArchConfig as JSON (ArchConfig.from_json)
CONFIG_ID = "config_id"  # ArchConfig.id: the same architecture has the same id in every study
RECIPE = "recipe"  # hash of the training recipe (nas.training.evaluator.training_recipe): results reused under it only
SEARCH_ACCURACY = "search_accuracy"  # top-1 on the search split: what selects (Optuna's objective value)
SEARCH_SE = "search_se"  # its binomial standard error
SEARCH_IMAGES = "search_images"  # images in the search split
SEARCH_ACCURACY_HISTORY = "search_accuracy_history"  # search accuracy after each epoch
TEST_ACCURACY = "test_accuracy"  # top-1 on the test split: what is reported, never used to select
TEST_SE = "test_se"
TEST_IMAGES = "test_images"
LATENCY_MS = "latency_ms"  # predicted latency (the second objective)
LATENCY_BREAKDOWN = "latency_breakdown"  # Prediction.to_dict(): per block and part, composition, MoE tokens
ENERGY_UJ = "energy_uj"  # estimated energy of one image, µJ (latency_model.energy; an estimate, not a measurement)
ENERGY_BREAKDOWN = "energy_breakdown"  # EnergyEstimate.to_dict(): the table, compute and memory, per block
MOE_SPLIT = "moe_split"  # MoE block -> share of token assignments per expert on the search split
WEIGHTS = "weights"  # parameter count and share of linear weights that are shifts
TRAIN_S = "train_s"  # seconds spent training (supernet mode: extracting, and the optional few steps)
EVALUATION = "evaluation"  # how its weights were obtained: "finetune" (its own) or "supernet" (inherited)

# ---- how a trial ran -----------------------------------------------------------------------------------------------
REFERENCE = "reference"  # on the enqueued reference trials: "dense" or "paper"
DUPLICATE_OF = "duplicate_of"  # number of the earlier trial whose result this one reused
WORKER = "worker"  # host:pid of the Optuna-backend worker that ran it (Ray trials have none)
SAMPLER_SEED = "sampler_seed"  # the seed of the sampler that proposed it (nas.study.sampler_seed of the driver's stream)
WALL_S = "wall_s"  # seconds from claim to tell
FAIL_REASON = "fail_reason"  # one line: why a failed trial failed
TRACEBACK = "traceback"  # the end of a failed trial's traceback
RAY_TRIAL_ID = "ray_trial_id"  # the Ray Tune trial that ran it
RAY_NODE_PREFIX = "ray_"  # + the node keys Ray reports (ray_node_id, ...)
DASHBOARD_ERROR = "dashboard_error"  # why the trial's note or artifact could not be written (the trial stands)

# A trial that reuses an earlier trial's result copies every attribute but these (they describe one run).
RUN_ONLY = frozenset({WORKER, SAMPLER_SEED, WALL_S, REFERENCE, TRAIN_S, DASHBOARD_ERROR})

# ---- a refine job (a trial of the companion study <name>:refine, nas.search.refine) ------------------------------
REFINE_JOB = "refine_job"  # the job's identity: "<config_id>/seed-<seed>/epochs-<epochs>"
SEED = "seed"  # the fine-tune's seed (data order, the init of the new parts)
SEARCH_TRIAL = "search_trial"  # the number of the search trial whose architecture it trains
LABEL = "label"  # "dense" or "trial N"
EPOCHS = "epochs"  # full passes over the train split
WEIGHTS_FILE = "weights_file"  # where the worker saved the fine-tuned weights (on its own machine)
# + a config id, on the companion study: the architecture's latency measured on this device (ms)
MEASURED_PREFIX = "measured_ms:"

# ---- the study's own attributes ------------------------------------------------------------------------------------
STUDY_FILE = "study_file"  # path of the study file that created the study
STUDY_MODEL = "model"  # ModelSpec.to_dict()
STUDY_LATENCY_DEVICE = "latency_device"  # the device the latencies are predicted for
STUDY_METRICS = "metrics"  # objectives.metrics: what each of the study's values is
STUDY_ENERGY_TABLE = "energy_table"  # UnitCosts.to_dict() of the table energies are priced with
# + a trial's number: {test_accuracy, test_se, test_images} of a supernet-mode trial, evaluated when it was first
# reported or exported (nas.search.objective.score_test_split; a told trial's own attributes cannot change any more)
STUDY_TEST_SPLIT_PREFIX = "test_split:"


def with_test_split(trial_attrs: dict, study_attrs: dict, number: int) -> dict:
    """A trial's attributes, with its test split where that was evaluated after the trial (supernet mode)."""
    later = study_attrs.get(f"{STUDY_TEST_SPLIT_PREFIX}{number}")
    return {**trial_attrs, **later} if later and TEST_ACCURACY not in trial_attrs else trial_attrs
