"""Python package of the CoTr MONAI bundle: network, data preparation and workflow helpers."""
