"""Studies that start from published weights (model.pretrained), tested offline, and the deployment-scale studies."""

from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from nas.training.checkpoints import load_published
from nas import pipeline
from nas.cli import main
from nas.study import Study
from tiny import TINY_MODEL
from search_spaces import ModelSpec
from search_spaces.errors import ResourceError
from search_spaces.reparam import create_model

STUDIES = Path(__file__).resolve().parent.parent / "studies"


@pytest.fixture
def offline(monkeypatch):
    """The Hugging Face hub unreachable, as on these machines, without waiting on the network to say so."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_pretrained_starts_from_the_published_weights_with_a_new_head(tmp_path, offline):
    kwargs = {k: v for k, v in TINY_MODEL["kwargs"].items() if k != "num_classes"}
    published = timm.create_model(TINY_MODEL["name"], pretrained=False, **kwargs)  # 1000 classes, as published
    save_file(published.state_dict(), tmp_path / "published.safetensors")
    spec = ModelSpec(TINY_MODEL["name"], {**kwargs, "num_classes": 10,
                                          "pretrained_cfg_overlay": {"file": str(tmp_path / "published.safetensors")}})
    model = create_model(spec, pretrained=True)
    for name, weight in published.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], weight), name
    assert model.head.weight.shape == (10, 32)  # the study's classes: a new head


def test_pretrained_file_gives_the_teacher_its_start(tmp_path, capsys):
    kwargs = {k: v for k, v in TINY_MODEL["kwargs"].items() if k != "num_classes"}
    published = timm.create_model(TINY_MODEL["name"], pretrained=False, **kwargs)  # 1000 classes, as published
    save_file(published.state_dict(), tmp_path / "published.safetensors")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({"name": "pre", "model": {**TINY_MODEL, "pretrained": "published.safetensors"},
                                          "data": {"source": "digits"}, "budget": {"pretrain_epochs": 1}}))
    study = Study.load(study_file)
    assert study.pretrained == tmp_path / "published.safetensors"  # relative to the study's folder
    model = load_published(create_model(study.model), study.pretrained)
    for name, weight in published.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], weight), name
    assert model.head.weight.shape == (10, 32) and not torch.equal(model.head.weight, published.head.weight[:10])
    pipeline.validate(study)
    assert pipeline.pretrain(study).path == str(tmp_path / "pre-teacher.safetensors")
    with safe_open(str(tmp_path / "pre-teacher.safetensors"), "pt") as f:
        assert f.metadata()["pretrained"] == str(study.pretrained)  # a teacher from other weights is stale

    other = timm.create_model(TINY_MODEL["name"], pretrained=False, **{**kwargs, "depth": 3})
    save_file(other.state_dict(), tmp_path / "published.safetensors")  # another architecture's weights
    capsys.readouterr()
    assert main(["validate", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert f"{study_file}: model.pretrained:" in err and "unexpected: blocks.2" in err and err.count("\n") == 1


def test_pretrained_without_the_hub_is_one_line(tmp_path, offline, capsys):
    with pytest.raises(ResourceError, match="model.pretrained: <that file>"):
        create_model(ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"]), pretrained=True)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "pre", "model": {**TINY_MODEL, "pretrained": True},
                                     "data": {"source": "digits"}, "budget": {"pretrain_epochs": 1}}))
    assert main(["pretrain", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.pretrained") and "Traceback" not in err
    assert not (tmp_path / "pre-teacher.safetensors").exists()


@pytest.mark.parametrize("name", ["deit_tiny_224", "pvt_v2_b0_224"])
def test_deployment_scale_studies_load_and_sample_without_their_data(name, capsys):
    study = Study.load(STUDIES / f"{name}.yaml")
    assert study.pretrained and study.data.source == "imagefolder"
    assert timm.create_model(study.model.name).default_cfg["input_size"][-1] == 224 == study.model.kwargs.get(
        "img_size", 224)
    assert main(["sample", str(STUDIES / f"{name}.yaml"), "--num", "2"]) == 0
