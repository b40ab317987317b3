"""Sampling a trained run: the Pipeline, folder generation with its manifest, editing, and 3D volumes."""
