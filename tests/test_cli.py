import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import main
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


def test_show_validates_a_config(tmp_path, capsys):
    out = tmp_path / "arch.yaml"
    main(["sample", str(QUICKSTART), "--out", str(out)])
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert "block 3:" in capsys.readouterr().out


def test_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: deit_tiny_patch16_224, kwargs: {depth: 2}}\nspace: {choices: {mlp: [dense, moe2]}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "nas.cli", "sample", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"error: {bad}: space.choices.mlp[1]: unknown mlp option 'moe2' (choose from dense, shift, moe)"
    )
    assert "Traceback" not in run.stderr


def test_argument_errors_are_reported_by_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", str(QUICKSTART), "--num", "0"])
    assert info.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err
