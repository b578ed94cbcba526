"""Capture sources: the I/O that feeds frames to the pipeline."""
