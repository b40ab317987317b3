"""Evaluation of synthetic images against the real data: fidelity, diversity, privacy and conditioning."""
