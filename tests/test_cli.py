import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import main
from tiny import PLUMBING_NOISE, model_section, vit
from search_spaces import ArchConfig

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"


def test_sample_prints_the_choices_and_writes_a_loadable_config(tmp_path, capsys):
    out = tmp_path / "arch.yaml"
    assert main(["sample", str(QUICKSTART), "--seed", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    config = ArchConfig.load(out)
    assert f"architecture {config.id}" in text and "parameters:" in text
    assert config.depth == 4 and config.model.kwargs["img_size"] == 32


def test_the_quickstart_study_validates_on_the_generated_shapes_task(capsys):
    assert main(["validate", str(QUICKSTART)]) == 0
    assert "data shapes: 5120 train / 1280 search / 1600 test images" in capsys.readouterr().out


def test_show_validates_a_config(tmp_path, capsys):
    out = tmp_path / "arch.yaml"
    main(["sample", str(QUICKSTART), "--out", str(out)])
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert "block 3:" in capsys.readouterr().out


def test_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel: {name: deit_tiny_patch16_224, kwargs: {depth: 2}}\nspace: {choices: {mlp: [dense, moe2]}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "nas.cli", "sample", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"error: {bad}: space.choices.mlp[1]: unknown mlp option 'moe2' (choose from dense, shift, shift16, int8, moe)"
    )
    assert "Traceback" not in run.stderr


def test_argument_errors_are_reported_by_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", str(QUICKSTART), "--num", "0"])
    assert info.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_profile_fit_and_latency_from_the_command_line(tmp_path, capsys):
    import json

    import yaml

    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny",
        "model": model_section(vit(patch_size=8, embed_dim=16, num_classes=3)),
        "space": {"choices": {"attention": ["msa", "linear"], "qkv": ["dense", "shift"], "proj": ["dense"],
                              "mlp": ["dense", "shift"]}},
        "latency": {"db": f"sqlite:///{tmp_path / 'lat.db'}", "trials": 0, "repeats": 3, **PLUMBING_NOISE},
    }))
    cache = ["--cache", str(tmp_path / "kernels")]
    assert main(["profile", str(study), *cache]) == 0
    assert main(["fit-latency", str(study)]) == 0
    predictors = list(tmp_path.glob("latency_*.json"))
    assert len(predictors) == 1  # next to the study, named for the device
    arch = tmp_path / "arch.yaml"
    assert main(["sample", str(study), "--out", str(arch)]) == 0
    capsys.readouterr()
    assert main(["latency", str(study), "--config", str(arch), "--measure", "--json", *cache]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["predicted_ms"] > 0 and last["measured_ms"] > 0 and len(last["breakdown"]["blocks"]) == 2
    from latency_model.energy import estimate
    from search_spaces import ArchConfig, BlockConfig

    # measured in turn with the dense model of the same shape: both ratios to it (none for the dense model itself)
    is_dense = all(b == BlockConfig() for b in ArchConfig.load(arch).blocks)
    assert (last["measured_vs_dense"] is None) == is_dense == (last["predicted_vs_dense"] is None)
    assert is_dense or (last["measured_vs_dense"] > 0 and last["predicted_vs_dense"] > 0)
    expected = estimate(ArchConfig.load(arch))  # one image, the study's (default) table: the same figure anywhere
    assert last["energy_uj"] == pytest.approx(expected.total_uj) and last["energy_breakdown"]["table"] == "horowitz45nm"
    assert last["op_counts"]["mult.fp32"] == expected.counts.ops["mult.fp32"] > 0 and last["bytes"]["weights"] > 0
    # the other energy model's figure beside it; under energy.model accelerator, every layer it priced
    from latency_model.energy import EnergySettings

    accelerator = estimate(ArchConfig.load(arch), EnergySettings.from_dict({"model": "accelerator"}))
    assert last["energy_models"] == pytest.approx({"op_counts": expected.total_uj, "accelerator": accelerator.total_uj})
    study.write_text(yaml.safe_dump({**yaml.safe_load(study.read_text()), "energy": {"model": "accelerator"}}))
    assert main(["latency", str(study), "--config", str(arch), "--json"]) == 0
    under = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert under["energy_breakdown"]["model"] == "accelerator" and under["energy_uj"] == pytest.approx(
        accelerator.total_uj) and under["energy_models"]["op_counts"] == pytest.approx(expected.total_uj)
    layers = under["energy_layers"]
    assert layers[0]["block"] == "frame" and {r["block"] for r in layers} >= {"0", "1"}
    assert sum(r["energy_uj"] * r["times"] for r in layers) == pytest.approx(under["energy_uj"], rel=1e-6)
    # what the command printed is the pipeline's step
    from nas import pipeline
    from nas.study import Study

    rep = pipeline.latency(Study.load(study), ArchConfig.load(arch))
    assert rep.prediction.total_ms == under["predicted_ms"] and rep.measured_ms is None and rep.dense_ms is None
    assert rep.energy.total_uj == pytest.approx(under["energy_uj"]) and rep.energy_models == pytest.approx(
        under["energy_models"])
    # a predictor for another device is refused with one clear line
    assert main(["latency", str(study), "--config", str(arch), "--device", "elsewhere",
                 "--predictor", str(predictors[0])]) == 2
    assert "fitted for device" in capsys.readouterr().err
