import itertools
import os

import pytest
import torch

from search_spaces import ModelSpec
from tiny import vit


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return vit(img_size=32, patch_size=8)


@pytest.fixture(scope="session")
def searchable(tmp_path_factory):
    """A tiny study's predictor and teacher, made once; returns a function writing a study file that uses them."""
    from tiny import base_study, prepare, write_study

    root = tmp_path_factory.mktemp("searchable")
    teacher = prepare(root)

    def study_file(folder, **changes):
        data = base_study(root)
        data["model"]["checkpoint"] = str(teacher)
        for section, values in changes.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        return write_study(folder / "study.yaml", data)

    return study_file


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of the tests' own (see tests/postgres_server.py); skipped without the binaries."""
    from postgres_server import PostgresServer, server_binaries

    binaries = server_binaries()
    if binaries is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql; .ci/run installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(binaries)
    yield server
    server.stop()


_databases = itertools.count()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a new, empty database on the tests' PostgreSQL server."""
    return postgres_server.new_database(f"test_{next(_databases)}")
