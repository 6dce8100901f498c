"""Reports: evaluation report, training curves, overlays, measurements, DICOM-SEG output, architecture figure."""
