"""synthmed: train generative models on your own medical images and generate labelled synthetic data."""

from synthmed.errors import SynthmedError

__version__ = "0.1.0"
__all__ = ["SynthmedError", "__version__", "load"]


def load(run_dir, **kwargs):
    """Load a trained run for generation: ``synthmed.load("runs/cxr").generate(label="PNEUMONIA", n=8)``."""
    from synthmed.sampling.pipeline import Pipeline

    return Pipeline.load(run_dir, **kwargs)
