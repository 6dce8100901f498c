"""
Data: label tables, datalists and their checks, splits, image geometry and DICOM series, dataset preparation,
fingerprints, synthetic data.
"""
