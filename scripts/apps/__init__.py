"""Apps: the demo and the MONAI Label server."""
