"""Training a run: one trainer for every stage (autoencoder, diffusion, ControlNets; 2D and 3D)."""
