"""Where training runs: train.device (auto | cpu | cuda | cuda:N) and train.precision (fp32 | bf16 | fp16), through the
trainer, the teacher, the objective and the commands; CUDA-only checks skip with their reason on a machine without."""

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from nas import device as devices
from nas.cli import main
from nas.device import Placement, resolve, worker_device
from nas.search.driver import SearchOptions
from nas.study import Study
from nas.training.trainer import LossWeights, Trainer, evaluate
from tiny import TINY_MODEL, write_study
from search_spaces import ArchConfig, BlockConfig, ConfigError, ModelSpec, MoEConfig, build_model

HAS_CUDA = torch.cuda.is_available()
PLACES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _tiny(spec_kwargs=None):
    spec = ModelSpec(TINY_MODEL["name"], {**TINY_MODEL["kwargs"], **(spec_kwargs or {})})
    moe = BlockConfig("additive", "shift", "dense", "moe", MoEConfig(1, ("dense", "shift")))
    return build_model(ArchConfig(spec, (moe, BlockConfig()))), build_model(ArchConfig.dense(spec, 2))


def _data(count=64):
    return TensorDataset(torch.randn(count, 3, 16, 16), torch.randint(0, 10, (count,)))


@pytest.mark.parametrize("where", PLACES)
def test_every_tensor_of_a_training_step_is_on_the_requested_device(where):
    student, teacher = _tiny()
    placement = Placement(torch.device(where))
    seen = []

    def record(module, inputs, output):
        for t in [*inputs, output]:
            if isinstance(t, torch.Tensor):
                seen.append((type(module).__name__, t.device.type))

    for model in (student, teacher):
        for module in model.modules():
            module.register_forward_hook(record)
    trainer = Trainer(student, _data(), epochs=1, steps_per_epoch=2, batch_size=16, teacher=teacher,
                      weights=LossWeights(moe=0.01), placement=placement)
    assert trainer.train_epoch() > 0
    assert seen and {d for _, d in seen} == {where}, sorted(set(seen))
    assert {p.device.type for p in student.parameters()} == {where}
    assert {s["exp_avg"].device.type for s in trainer.optimizer.state.values()} == {where}
    assert evaluate(student, _data(32), placement=placement).count == 32


def test_bf16_autocast_trains_on_the_cpu():
    student, teacher = _tiny()
    dtypes = set()
    student.head.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    before = student.head.weight.detach().clone()
    trainer = Trainer(student, _data(), epochs=1, steps_per_epoch=3, batch_size=16, teacher=teacher,
                      placement=Placement(torch.device("cpu"), "bf16"))
    loss = trainer.train_epoch()
    assert dtypes == {torch.bfloat16} and loss == loss and loss > 0  # the forward ran in bf16, the loss is finite
    assert student.head.weight.dtype == torch.float32 and not torch.equal(before, student.head.weight)
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA device"):
        Placement(torch.device("cpu"), "fp16")


def test_auto_falls_back_to_the_cpu_and_says_so_once(capsys, monkeypatch):
    monkeypatch.setattr(devices, "_said", set())
    if HAS_CUDA:
        assert resolve("auto").device == torch.device("cuda", 0)
        return
    assert resolve("auto").device == torch.device("cpu") == resolve("auto").device
    assert capsys.readouterr().err.count("train.device: auto: no CUDA device here, training on the CPU") == 1
    assert resolve("cpu", "bf16").describe() == "cpu, bf16 autocast"


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without a CUDA device")
def test_cuda_without_a_gpu_is_one_line_at_validate_and_before_any_work(tmp_path, capsys):
    study = write_study(tmp_path / "s.yaml", {"name": "s", "model": TINY_MODEL, "train": {"device": "cuda"}})
    for argv in (["validate", str(study)], ["search", str(study)], ["pretrain", str(study)],
                 ["run", str(study)], ["validate", str(tmp_path / "s.yaml"), "--device", "cuda:1"]):
        assert main(argv) == 2, argv
        said = capsys.readouterr().err
        assert "train.device: cuda" in said and "no CUDA device torch can use" in said and "Traceback" not in said
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "s-teacher.safetensors").exists()
    assert main(["validate", str(study), "--device", "cpu"]) == 0
    assert "training on cpu" in capsys.readouterr().out


def test_device_settings_are_checked_and_are_not_part_of_the_recipe(tmp_path):
    from nas.training.evaluator import training_recipe
    from nas.training.teacher import _fingerprint

    path = tmp_path / "s.yaml"
    for bad, where in (({"device": "gpu"}, "train.device"), ({"device": "cuda:x"}, "train.device"),
                       ({"precision": "int8"}, "train.precision"), ({"loader_workers": -1}, "train.loader_workers")):
        path.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL, "train": bad}))
        with pytest.raises(ConfigError, match=where):
            Study.load(path)
    path.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL}))
    study = Study.load(path)
    assert (study.train.device, study.train.precision) == ("auto", "fp32")
    elsewhere = study.on_device("cpu")
    # the same recipe wherever it trains (cached results and the teacher stay valid); a precision is a new one
    assert training_recipe(elsewhere) == training_recipe(study) and _fingerprint(elsewhere) == _fingerprint(study)
    assert "precision" not in study.train.recipe()
    path.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL, "train": {"precision": "bf16"}}))
    assert training_recipe(Study.load(path)) != training_recipe(study)
    with pytest.raises(ConfigError, match="--device"):
        study.on_device("tpu")


def test_workers_share_the_gpus_round_robin_and_ray_trials_use_the_one_ray_gives(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "cuda_count", lambda: 3)  # several GPUs cannot be had here
    assert [worker_device("auto", i) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert [worker_device(d, 1) for d in ("cuda", "cuda:2", "cpu")] == ["cuda:1", "cuda:2", "cpu"]
    monkeypatch.setattr(devices, "cuda_count", lambda: 1)
    assert worker_device("auto", 1) == "auto"

    ray_search = pytest.importorskip("nas.search.ray_backend",
                                     reason="Ray is not installed (a GPU machine's carried set)")
    trial_device, RayDriver = ray_search.trial_device, ray_search.RayDriver
    assert trial_device("auto", 0) == "cpu" and trial_device("auto", 1) == "cuda" and trial_device("cpu", 1) == "cpu"
    path = tmp_path / "s.yaml"
    for train, gpus, where in (({"device": "cuda"}, 0, "--gpus-per-trial"), ({"device": "cuda:1"}, 1, "train.device"),
                               ({"precision": "fp16"}, 0, "train.precision")):
        path.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL, "train": train}))
        with pytest.raises(ConfigError, match=where):
            RayDriver().check(Study.load(path), SearchOptions(gpus_per_trial=gpus))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_a_trial_trains_and_is_scored_on_the_gpu(searchable, tmp_path):
    from nas.training.evaluator import Evaluator

    study = Study.load(searchable(tmp_path, train={"device": "cuda", "precision": "bf16"}))
    evaluator = Evaluator(study)
    assert next(evaluator.teacher.parameters()).is_cuda
    config = study.space.sample(__import__("numpy").random.default_rng(0))
    result, model = evaluator.run(config, epochs=1)
    assert next(model.parameters()).is_cuda and 0 <= result.accuracy <= 1 and result.latency_ms > 0
