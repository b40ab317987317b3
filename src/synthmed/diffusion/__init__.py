"""The denoising loop (guidance, inpainting, per-image seeds) and tiled decoding, shaped like MONAI's
inferers: the one layer that training (previews) and sampling (generation, editing) both call."""
