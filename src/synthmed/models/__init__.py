"""The networks: MONAI builders for the autoencoder, diffusion UNet, ControlNet and schedulers, their
conditioning, and the trained networks of a run folder."""
