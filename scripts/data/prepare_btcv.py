"""
Write the datalist JSON of the BTCV (Synapse multi-organ) dataset: the ``btcv`` layout of
:mod:`scripts.data.prepare_dataset` (:func:`~scripts.data.prepare_dataset.prepare_btcv`), under its own command.

Every file is validated first (see :func:`scripts.data.checks.check_image_label_pair`); all problems are
reported together, by file, before anything is written. The datalist's paths are relative to ``data_dir``.

Usage::

    python -m scripts.data.prepare_btcv --data_dir /data/RawData --output /data/RawData/datalist.json
    python -m scripts.data.prepare_btcv --data_dir /data/RawData --output datalist.json --split kfold --fold 2
"""

from scripts.data.checks import run_data_cli
from scripts.data.prepare_dataset import prepare_btcv

if __name__ == "__main__":
    run_data_cli(prepare_btcv, serialize=lambda path: None)  # prepare_btcv prints a summary
