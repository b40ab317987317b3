"""Downstream benchmark: does adding synthetic images to real training data help a classifier or segmenter
tested on real images the generator never saw? Entry point: `synthmed.downstream.run.benchmark`."""
