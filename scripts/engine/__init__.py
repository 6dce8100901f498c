"""
Engine: inferers, handlers, checkpoints, config checks, inference inputs, transforms, metrics, errors and atomic
writes.
"""
