"""Python package of the CoTr MONAI bundle: network, data preparation and workflow helpers."""

import logging
import warnings

# With pydicom installed (scripts/data/dicom.py reads DICOM series with it), every MONAI LoadImage announces that the
# optional nvImageCodec decoder is missing, once per construction: noise in every run's log and summary.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
