import os

import pytest
from monai.bundle import ConfigParser

from ..conftest import BUNDLE_ROOT


@pytest.fixture(scope="module")
def config() -> ConfigParser:
    """configs/inference.json, read once per module (its ids are parsed by the tests that need them)."""
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE_ROOT, "configs", "inference.json"))
    return parser
