"""synthmed: train generative models on your own medical images and generate labelled synthetic data."""

from synthmed.errors import SynthmedError
from synthmed.version import __version__

__all__ = ["SynthmedError", "__version__", "load"]


def load(run_dir, **kwargs):
    """Load a trained run for generation and editing:
    ``synthmed.load("runs/cxr").generate(label="PNEUMONIA", n=8)``."""
    from synthmed.sampling.editing import EditingPipeline

    return EditingPipeline.load(run_dir, **kwargs)
