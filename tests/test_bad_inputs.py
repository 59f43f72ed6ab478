"""The bad-input corpus (tests/bad_inputs/cases.yaml) and the cases that need files made at test time: every one
exits with status 2 and one message naming what and where, never a traceback, and changes nothing stored."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from nas.cli import main
from tiny import TINY_MODEL, write_study
from search_spaces import ModelSpec
from search_spaces.reparam import create_model

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _check(code, output, expect, where=None):
    assert code == 2, output[-2000:]
    assert "Traceback" not in output
    for text in expect + ([where] if where else []):
        assert text in output, f"{text!r} not in {output[-2000:]!r}"


def test_the_corpus_has_at_least_twenty_cases():
    assert len(CASES) + len(DYNAMIC) >= 20


@pytest.mark.parametrize("case", CASES, ids=[f"{c['command'][0]} {c['file']}" if c["file"] else " ".join(c["command"][:4])
                                           for c in CASES])
def test_corpus_case(case, capsys):
    argv = [arg.format(file=CORPUS / case["file"], dir=CORPUS) for arg in case["command"]]
    code, output = _run(argv, capsys)
    _check(code, output, case["expect"], str(CORPUS / case["file"]) if case["file"] and
           case["file"] != "missing.yaml" else None)


def _other_model_checkpoint(tmp_path):
    other = create_model(ModelSpec(TINY_MODEL["name"], {**TINY_MODEL["kwargs"], "embed_dim": 48}))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    return {"checkpoint": "other.pt"}, ["model.checkpoint", "does not match the model", "shape"]


def _one_class_folder(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "images" / split / "cat" / "0.png")
    return {"data": {"source": "imagefolder", "path": "images"}}, ["data.path", "1 class folder"]


def _class_without_images(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "images" / "train" / name).mkdir(parents=True)
    (tmp_path / "images" / "train" / "cat" / "notes.txt").write_text("no images here")
    return {"data": {"source": "imagefolder", "path": "images"}}, ["data.path", "has no images"]


DYNAMIC = {"checkpoint of another model": _other_model_checkpoint, "data folder with one class": _one_class_folder,
           "class folder without images": _class_without_images}


@pytest.mark.parametrize("name", list(DYNAMIC))
def test_case_with_files_made_here(name, tmp_path, capsys):
    changes, expect = DYNAMIC[name](tmp_path)
    data = {"name": "bad", "model": dict(TINY_MODEL)}
    if "checkpoint" in changes:
        data["model"]["checkpoint"] = changes.pop("checkpoint")
    study = write_study(tmp_path / "study.yaml", {**data, **changes})
    code, output = _run(["validate", str(study)], capsys)
    _check(code, output, expect, str(study))
