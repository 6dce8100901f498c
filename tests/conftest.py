from __future__ import annotations

import os
import sys

import pytest

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BUNDLE_ROOT not in sys.path:  # monai.bundle puts the bundle root on sys.path only inside run()
    sys.path.insert(0, BUNDLE_ROOT)


@pytest.fixture(scope="session")
def synthetic_study(tmp_path_factory) -> str:
    """A small synthetic CT study in BTCV layout: 6 labelled cases (4 train, 2 held out) and 2 unlabelled."""
    from scripts.data.synthetic import generate

    root = str(tmp_path_factory.mktemp("study"))
    generate(
        root,
        num_cases=6,
        num_test=2,
        shape=(96, 96, 32),
        spacing=(2.0, 2.0, 4.5),
        seed=3,
        val_fraction=0.34,
        overwrite=True,
    )
    return root
