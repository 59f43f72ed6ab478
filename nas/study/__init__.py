"""The study file: one YAML file holds everything a search needs, validated on load.

    name: quickstart                      # the Optuna study name; default storage sqlite:///<dir>/<name>.db
    plugins: []                           # Python modules to import first: they register primitives
                                          #   (search_spaces.registry), in every process that reads the study
    model:
      name: deit_tiny_patch16_224         # timm VisionTransformer + kwargs (see search_spaces.config)
      kwargs: {img_size: 32, patch_size: 4, depth: 4, embed_dim: 64, num_heads: 2, num_classes: 10}
      checkpoint: null                    # dense weights (.safetensors, or a torch file read with weights_only);
                                          #   null: `nas pretrain` trains them into <dir>/<name>-teacher.safetensors
      pretrained: false                   # true: `nas pretrain` starts from timm's published weights (downloaded;
                                          #   a new head when num_classes differs) instead of a random init;
                                          #   a file: those weights, downloaded elsewhere
    data:
      source: digits                      # shapes (generated) | digits (bundled) | imagefolder
      path: null                          # imagefolder: a folder with train/<class>/*.png and val/<class>/*.png
      images: 8000                        # shapes: how many images are generated (train, search and test together)
      test_fraction: 0.2                  # shapes, digits: share held out as the test set (imagefolder: its val/)
      search_fraction: 0.2                # share of the training data carved out (stratified) to score trials on
      seed: 0                             # seed of the search split (and of the shapes generator)
    space: {...}                          # see search_spaces.space
    objectives:
      metrics: [accuracy, latency_ms]     # accuracy (maximized), then any of latency_ms (predicted) and energy_uj
                                          #   (estimated), minimized: a Pareto search; [accuracy] alone: one objective
      latency_budget_ms: null             # configs predicted slower are infeasible (latency_ms not an objective)
      energy_budget_uj: null              # configs estimated to spend more are infeasible (energy_uj not one)
    latency: {...}                        # see latency_model.settings
    energy:                               # how energy_uj is priced (latency_model.energy)
      model: op_counts                    # op_counts | accelerator (the released accelerator model, its own costs)
      table: horowitz45nm                 # op_counts: horowitz45nm | shiftaddnas; ops: {shift.int32: 0.13, ...},
                                          #   dram_pj_per_byte, sram_pj_per_byte override its entries
    budget:
      n_trials: 20                        # trials that finish (complete or pruned); a re-run continues up to it
      timeout_s: null                     # stop starting trials after this many seconds (per `nas search` run)
      epochs: 2                           # fine-tuning epochs per trial (a validation score after each)
      steps_per_epoch: 20                 # null: one pass over the training set
      pretrain_epochs: 20                 # epochs of `nas pretrain` (when no checkpoint is given)
      finetune_epochs: 10                 # default epochs of `nas finetune`
    train:
      batch_size: 64
      lr: 0.001                           # fine-tuning (trials, nas finetune): AdamW, cosine decay over the run
      pretrain_lr: 0.002                  # pretraining the teacher
      weight_decay: 0.05
      distill_alpha: 0.5                  # weight of the KL to the teacher (1 - alpha: cross-entropy to the labels)
      distill_temperature: 2.0
      moe_loss_weight: 0.01               # weight of the latency-aware MoE balance loss
      seed: 0
      device: auto                        # auto (CUDA when there is one, else the CPU) | cpu | cuda | cuda:N
      precision: fp32                     # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler, CUDA)
      loader_workers: null                # DataLoader processes (null: 0 in memory, up to 4 for an imagefolder)
    evaluation:
      mode: finetune                      # finetune: each trial fine-tunes its own copy of the teacher (the budget
                                          #   above) | supernet: it inherits weights from the study's supernet
      finetune_steps: 0                   # supernet mode: steps of the trial recipe after inheriting (0: none)
      supernet_steps: 1000                # `nas supernet`: training steps (sandwich rule, distilled from the teacher)
      random_subnets: 2                   # per step, besides the densest and the predicted-cheapest subnet
      supernet_lr: null                   # null: train.lr
    sampler: {name: tpe, seed: 0}         # tpe | nsga2 | random
    pruner: {name: none}                  # none | median | hyperband | asha (single objective only; kwargs passed
                                          #   on). asha: Optuna's SuccessiveHalvingPruner, Ray's ASHAScheduler
    storage: null                         # any SQLAlchemy URL Optuna accepts; default sqlite:///<dir>/<name>.db
    search:
      heartbeat_s: 60                     # a worker's trials beat this often; one silent for 2 beats is FAIL
      retries: 1                          # a trial failed that way is queued again this many times
    artifacts: null                       # optuna-dashboard's artifact store: a folder (default runs/<name>/artifacts
                                          #   next to the file), s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]

Relative paths (checkpoint, data path, storage file, artifacts) are relative to the study file's folder.
"""

from .assembly import SECTIONS, Study, load_plugins
from .factories import PRUNERS, SAMPLERS, create_pruner, create_sampler, sampler_seed
from .sections import (
                       BUDGETS,
                       DATA_SOURCES,
                       DEFAULT_IMAGES,
                       EVALUATION_MODES,
                       MAX_SHAPES_IMAGES,
                       METRICS,
                       Budget,
                       Choice,
                       DataSpec,
                       EvaluationSettings,
                       Objectives,
                       RefineSettings,
                       SearchSettings,
                       TrainSettings,
)

__all__ = ["BUDGETS", "Budget", "Choice", "DATA_SOURCES", "DEFAULT_IMAGES", "DataSpec", "EVALUATION_MODES",
           "EvaluationSettings", "MAX_SHAPES_IMAGES", "METRICS", "Objectives", "PRUNERS", "RefineSettings", "SAMPLERS",
           "SECTIONS", "SearchSettings", "Study", "TrainSettings", "create_pruner", "create_sampler", "load_plugins",
           "sampler_seed"]
