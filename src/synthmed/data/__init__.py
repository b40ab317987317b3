"""2D ingestion: read images, find a data set's files and labels, preprocess, split and load them.

Every reader raises only SynthmedError (naming the file) on bad input.
"""

from synthmed.data.loading import (
    Loaded,
    Prepared,
    check_readable,
    image_channels,
    load_arrays,
    load_split_arrays,
    prepare,
)
from synthmed.data.preprocess import build_transform, preprocess
from synthmed.data.readers import IMAGE_EXTENSIONS, decode_image, read_image, validate_array
from synthmed.data.sources import SPLITS, Discovery, Record, Skipped, discover
from synthmed.data.splits import assign_splits, read_split, write_split

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "Discovery",
    "Loaded",
    "Prepared",
    "Record",
    "Skipped",
    "assign_splits",
    "build_transform",
    "check_readable",
    "decode_image",
    "discover",
    "image_channels",
    "load_arrays",
    "load_split_arrays",
    "prepare",
    "preprocess",
    "read_image",
    "read_split",
    "validate_array",
    "write_split",
]
