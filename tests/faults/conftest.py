"""Fixtures of the fault-injection suite (tests/faults): a tiny exported masker and training run."""

from __future__ import annotations

import pytest

from casm.export import export_masker, load_masker


@pytest.fixture(scope="session")
def exported_dir(trained_checkpoint, tmp_path_factory):
    return export_masker(trained_checkpoint, tmp_path_factory.mktemp("faults_export") / "masker")


@pytest.fixture
def exported_masker(exported_dir):
    return load_masker(exported_dir)
