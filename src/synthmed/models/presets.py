"""Named architecture and training presets; a YAML config overrides any field of them.

Sizes follow the MONAI generative tutorials (2D LDM on MedNIST / chest X-rays), scaled down so that the
``small64`` preset trains in minutes on a laptop CPU and ``tiny`` in seconds for tests.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # For tests and smoke runs: 32 px, 4x compression, a few thousand parameters per net.
    "tiny": {
        "data": {"image_size": 32},
        "autoencoder": {
            "arch": {
                "channels": [8, 16, 16],
                "num_res_blocks": 1,
                "attention_levels": [False, False, False],
                "latent_channels": 3,
                "norm_num_groups": 4,
                "with_nonlocal_attn": False,
            },
            "steps": 40,
            "batch_size": 8,
            "lr": 2e-3,
        },
        "diffusion": {
            "arch": {
                "channels": [16, 32],
                "num_res_blocks": 1,
                "attention_levels": [False, True],
                "num_head_channels": 8,
                "norm_num_groups": 8,
            },
            "steps": 40,
            "batch_size": 8,
            "lr": 2e-3,
        },
        "controlnet": {"embedding_channels": [4, 8, 16], "steps": 20, "batch_size": 8, "lr": 2e-3},
    },
    # 64 px images -> 16x16x3 latents (4x); the benchmark and demo preset.
    "small64": {
        "data": {"image_size": 64},
        "autoencoder": {
            "arch": {
                "channels": [32, 64, 64],
                "num_res_blocks": 1,
                "attention_levels": [False, False, False],
                "latent_channels": 3,
                "norm_num_groups": 16,
                "with_nonlocal_attn": False,
            },
            "steps": 3000,
            "batch_size": 32,
            "lr": 1e-3,
        },
        "diffusion": {
            "arch": {
                "channels": [64, 128, 128],
                "num_res_blocks": 1,
                "attention_levels": [False, True, True],
                "num_head_channels": 32,
                "norm_num_groups": 32,
            },
            "steps": 6000,
            "batch_size": 64,
            "lr": 5e-4,
        },
        "controlnet": {"embedding_channels": [16, 32, 64], "steps": 3000, "batch_size": 32, "lr": 5e-4},
    },
    # 128-256 px images -> 8x compression to 4 latent channels, as in the MONAI/MAISI 2D recipes.
    "base256": {
        "data": {"image_size": 256},
        "autoencoder": {
            "arch": {
                "channels": [64, 128, 128, 128],
                "num_res_blocks": 2,
                "attention_levels": [False, False, False, False],
                "latent_channels": 4,
                "norm_num_groups": 32,
                "with_nonlocal_attn": True,
            },
            "steps": 20000,
            "batch_size": 16,
            "lr": 1e-4,
            "adv_weight": 0.01,
        },
        "diffusion": {
            "arch": {
                "channels": [128, 256, 256],
                "num_res_blocks": 2,
                "attention_levels": [False, True, True],
                "num_head_channels": 64,
                "norm_num_groups": 32,
            },
            "steps": 50000,
            "batch_size": 32,
            "lr": 1e-4,
        },
        "controlnet": {"embedding_channels": [16, 32, 64, 128], "steps": 20000, "batch_size": 16, "lr": 1e-4},
    },
    # 3D (MAISI style, scaled for a CPU): 4x VAE to 4 latent channels, spacing-conditioned rectified-flow UNet
    # and a label-map ControlNet. tiny3d is for tests; small3d for 64^3 volumes.
    "tiny3d": {
        "data": {"volume": {"size": [16, 24, 16]}},
        "autoencoder": {
            "arch": {
                "channels": [8, 16, 16],
                "num_res_blocks": 1,
                "attention_levels": [False, False, False],
                "latent_channels": 4,
                "norm_num_groups": 4,
                "with_nonlocal_attn": False,
            },
            "steps": 20,
            "batch_size": 4,
            "lr": 2e-3,
        },
        "diffusion": {
            "arch": {
                "channels": [16, 32],
                "num_res_blocks": 1,
                "attention_levels": [False, False],
                "num_head_channels": 8,
                "norm_num_groups": 8,
            },
            "noise": {"kind": "rflow"},
            "steps": 20,
            "batch_size": 4,
            "lr": 2e-3,
            "label_dropout": 0.0,
        },
        "controlnet": {"embedding_channels": [4, 8, 16], "steps": 20, "batch_size": 4, "lr": 2e-3},
    },
    "small3d": {
        "data": {"volume": {"size": [64, 64, 64]}},
        "autoencoder": {
            "arch": {
                "channels": [32, 64, 64],
                "num_res_blocks": 1,
                "attention_levels": [False, False, False],
                "latent_channels": 4,
                "norm_num_groups": 16,
                "with_nonlocal_attn": False,
            },
            "steps": 2000,
            "batch_size": 4,
            "lr": 1e-3,
        },
        "diffusion": {
            "arch": {
                "channels": [64, 128, 128],
                "num_res_blocks": 1,
                "attention_levels": [False, False, True],
                "num_head_channels": 32,
                "norm_num_groups": 32,
            },
            "noise": {"kind": "rflow"},
            "steps": 4000,
            "batch_size": 4,
            "lr": 5e-4,
            "label_dropout": 0.0,
        },
        "controlnet": {"embedding_channels": [16, 32, 64], "steps": 2000, "batch_size": 4, "lr": 5e-4},
    },
}
