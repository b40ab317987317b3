"""`synthmed generate`, `synthmed edit` and `synthmed regenerate`. Heavy imports (torch through the sampling
code) stay inside the functions so that `synthmed --help` stays fast."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from synthmed.cli_support import ConditionName, command_config, err, user_errors
from synthmed.config import EditConfig, GenerateConfig
from synthmed.errors import SynthmedError

#: Serves `generate --from-requests` (called with the flag, --database, --config, every option given and
#: --progress): the catalogue's regeneration requests, a stage above this one, so cli.py passes it in.
RequestsHandler = Callable[[bool, str | None, Path | None, Mapping[str, Any], bool], None]


def generate_command(handle_requests: RequestsHandler) -> Callable[..., None]:
    """The `synthmed generate` command, its --from-requests served by ``handle_requests``."""

    @user_errors
    def generate(
        run_dir: Annotated[Path | None, typer.Option("--run", help="Trained run directory.")] = None,
        out: Annotated[
            Path | None, typer.Option(help="Output folder: <label>/syn_<seed>.png + manifest.jsonl.")
        ] = None,
        label: Annotated[str | None, typer.Option(help="Class to generate (omit for unconditional).")] = None,
        count: Annotated[int | None, typer.Option(help="Number of images.")] = None,
        steps: Annotated[
            int | None,
            typer.Option(
                help="Sampler steps (default: 25 for ddim, 10 ddpm, 30 rflow, 4 distilled, else 25)."
            ),
        ] = None,
        guidance: Annotated[
            float | None, typer.Option(help="Classifier-free guidance scale (1 = none).")
        ] = None,
        seed: Annotated[int | None, typer.Option(help="First seed; image i gets seed+i.")] = None,
        sampler: Annotated[
            str | None,
            typer.Option(
                help="Default: ddim for DDPM-trained models (2D presets; also ddpm, dpmsolver, unipc, pndm), "
                "rflow for rectified-flow models (3D presets: the only one); distilled for a run's distilled "
                "students (synthmed distill; --steps 1, 2, 4, ...)."
            ),
        ] = None,
        decoder: Annotated[
            str | None,
            typer.Option(
                help="full (the autoencoder's decoder) or lite: the run's lightweight decoder made by "
                "synthmed distill, a fraction of the cost (2D; recorded in the manifest)."
            ),
        ] = None,
        batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
        bit_depth: Annotated[int | None, typer.Option(help="PNG bit depth: 8 or 16.")] = None,
        precision: Annotated[
            str | None, typer.Option(help="fp32 (bit-reproducible), bf16, fp16 or auto.")
        ] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
        compile: Annotated[
            bool | None,
            typer.Option("--compile", help="torch.compile the UNet (minutes of compiling first)."),
        ] = None,
        privacy_filter: Annotated[
            bool | None,
            typer.Option(
                "--privacy-filter",
                help="Drop and replace images closer to a training image than real holdout images are "
                "(pixel-space normalised correlation; recorded in the manifest).",
            ),
        ] = None,
        copy_percentile: Annotated[
            float | None,
            typer.Option(help="Privacy filter threshold: closer than this % of holdout images (99)."),
        ] = None,
        size: Annotated[
            tuple[int, int, int] | None,
            typer.Option(help="3D: output voxels X Y Z (default: the training size).", show_default=False),
        ] = None,
        spacing: Annotated[
            tuple[float, float, float] | None,
            typer.Option(
                help="3D: voxel spacing in mm X Y Z, also the model's input (default: training).",
                show_default=False,
            ),
        ] = None,
        label_map: Annotated[
            Path | None,
            typer.Option(
                help="3D: NIfTI label map to generate the image for (default: drawn from the training maps)."
            ),
        ] = None,
        augment_label_maps: Annotated[
            bool | None,
            typer.Option(
                help="3D: deform label maps drawn from the training set (random affine, nearest).",
                show_default=False,
            ),
        ] = None,
        conditioning_scale: Annotated[
            float | None,
            typer.Option(
                help="ControlNet strength (2D: 1, 3D label maps: 2; 0 ignores the label map or condition "
                "file)."
            ),
        ] = None,
        condition_file: Annotated[
            Path | None,
            typer.Option(
                help="2D: structure map to follow, any size: a binary mask (written beside each image as "
                "<stem>_mask.png), or for edges/sobel an image whose edges are computed."
            ),
        ] = None,
        condition: Annotated[
            ConditionName | None, typer.Option(help="2D: which ControlNet follows --condition-file (mask).")
        ] = None,
        tile_size: Annotated[
            int | None, typer.Option(help="3D: VAE decoding tile in latent voxels (32); bounds memory.")
        ] = None,
        tile_overlap: Annotated[
            float | None, typer.Option(help="3D: overlap of decoding tiles (0.25).")
        ] = None,
        qc_retries: Annotated[
            int | None, typer.Option(help="3D: new seeds tried when a volume fails the intensity check (3).")
        ] = None,
        qc_strict: Annotated[
            bool | None,
            typer.Option(
                "--qc-strict",
                help="3D: do not keep a volume that still fails the check after its retries; end with an "
                "error naming the seeds.",
            ),
        ] = None,
        from_requests: Annotated[
            bool,
            typer.Option(
                "--from-requests",
                help="Fulfil the catalogue's open regeneration requests (rejected samples): each is "
                "generated again with its recorded settings and a new seed into its own folder, and "
                "imported. Takes only --database, --device and --config (FromRequestsConfig).",
            ),
        ] = False,
        database: Annotated[
            str | None, typer.Option(help="--from-requests: catalogue URL (default: $SYNTHMED_DATABASE_URL).")
        ] = None,
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="YAML with GenerateConfig fields.")
        ] = None,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        """Generate labelled synthetic images (2D PNG) or volumes (3D NIfTI) with a provenance manifest.

        3D runs write syn_<seed>_image.nii.gz with its syn_<seed>_label.nii.gz (the label map it was generated
        for), previews/syn_<seed>.png (three views, labels overlaid), and check every volume's per-label
        intensities against the training data (failures are re-tried with new seeds, all in the manifest).
        2D runs with a ControlNet follow --condition-file: a mask file (BUSI style; any size, resized like the
        training masks; an empty mask means no lesion) is written beside every image as its annotation.
        Re-running the same command continues an interrupted job: images already written are kept.
        """
        options = locals()  # each option sets the GenerateConfig field of its name
        from synthmed.runtime import torchrun_command
        from synthmed.sampling.generate import generate_to_folder

        if from_requests or database is not None:
            handle_requests(from_requests, database, config, options, progress)
            return
        cfg = command_config(GenerateConfig, config, options)
        with torchrun_command():
            generate_to_folder(cfg, progress=progress)
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, by rank 0
            _say_quality_failures(cfg)
            err.print(f"done: {cfg.count} images in {cfg.out}")

    return generate


def _say_quality_failures(cfg: GenerateConfig) -> None:
    """3D: the volumes kept although they failed the quality check after their retries, by seed."""
    from synthmed.sampling.volumes import quality_failures

    failed = quality_failures(cfg)
    if failed:
        err.print(
            f"[yellow]warning:[/yellow] {len(failed)} of {cfg.count} volumes failed the intensity quality "
            f"check after {cfg.qc_retries} retries and were kept: seeds {failed} (their manifest rows' "
            "'quality' names the structures); --qc-strict does not keep them",
            highlight=False,
            soft_wrap=True,
        )


edit_app = typer.Typer(
    help="Edit real 2D images with a trained run: insert a lesion, remove an artefact, harmonise.",
    no_args_is_help=True,
)
# Options the three edit commands share; each sets the EditConfig field of its parameter's name.
EditRun = Annotated[Path | None, typer.Option("--run", help="Trained run directory.")]
EditImage = Annotated[Path | None, typer.Option(help="Image to edit (PNG, JPEG, TIFF, DICOM).")]
EditOut = Annotated[
    Path | None,
    typer.Option(
        help="Output image: .png keeps the input's 8/16-bit values, .tif float32; plus <stem>.json."
    ),
]
EditSeed = Annotated[int | None, typer.Option(help="Seed of the new content.")]
EditSteps = Annotated[int | None, typer.Option(help="Sampler steps (50).")]
EditConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML with EditConfig fields.")]
EditResample = Annotated[int | None, typer.Option(help="RePaint passes per step inside the region (2).")]
EditScale = Annotated[
    float | None, typer.Option(help="Mask ControlNet strength if the run has one (1; 0 = not used).")
]
EditDevice = Annotated[str | None, typer.Option(help="auto, cpu or cuda.")]


def _edit(operation: str, config: Path | None, options: Mapping[str, Any]) -> None:
    from synthmed.sampling.editing import edit_from_config

    cfg = command_config(EditConfig, config, {**options, "operation": operation})
    for path in edit_from_config(cfg):
        err.print(f"wrote {path}")


@edit_app.command("insert")
@user_errors
def edit_insert(
    run_dir: EditRun = None,
    image: EditImage = None,
    region: Annotated[
        Path | None, typer.Option(help="Binary mask at the image's size: where the lesion goes.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Lesion class, e.g. malignant.")] = None,
    out: EditOut = None,
    seed: EditSeed = None,
    steps: EditSteps = None,
    resample: EditResample = None,
    conditioning_scale: EditScale = None,
    device: EditDevice = None,
    config: EditConfigFile = None,
) -> None:
    """Insert a lesion of class --label into --region; only the region's pixels change.

    Writes the edited image, <stem>_mask.png (the new lesion's mask: the region) and <stem>.json
    (provenance, incl. the measured largest change outside the region: 0).
    """
    _edit("insert", config, locals())


@edit_app.command("remove")
@user_errors
def edit_remove(
    run_dir: EditRun = None,
    image: EditImage = None,
    region: Annotated[
        Path | None, typer.Option("--mask", help="Binary mask at the image's size: the artefact or implant.")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="Class the fill comes from, e.g. normal (default: unconditional).")
    ] = None,
    out: EditOut = None,
    seed: EditSeed = None,
    steps: EditSteps = None,
    resample: EditResample = None,
    conditioning_scale: EditScale = None,
    device: EditDevice = None,
    config: EditConfigFile = None,
) -> None:
    """Fill --mask with plausible anatomy (inpainting); only the masked pixels change."""
    _edit("remove", config, locals())


@edit_app.command("harmonize")
@user_errors
def edit_harmonize(
    run_dir: EditRun = None,
    image: EditImage = None,
    strength: Annotated[
        float | None,
        typer.Option(
            help="0 keeps the image (up to the autoencoder), 1 ignores it; 0.2-0.5 change the look."
        ),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Target class, site or scanner of the run.")] = None,
    region: Annotated[Path | None, typer.Option(help="Optional binary mask: harmonise only there.")] = None,
    out: EditOut = None,
    seed: EditSeed = None,
    steps: EditSteps = None,
    device: EditDevice = None,
    config: EditConfigFile = None,
) -> None:
    """Render an image in the look of --label (SDEdit: noise to --strength of the schedule, then denoise).

    The result is made at the model's resolution and enlarged back to the input's size.
    """
    _edit("harmonize", config, locals())


@user_errors
def regenerate(
    manifest: Annotated[Path, typer.Argument(help="A manifest.jsonl written by synthmed generate.")],
    file: Annotated[str, typer.Option(help="The row's file name, e.g. PNEUMONIA/syn_00000003.png.")],
    out: Annotated[
        Path,
        typer.Option(
            help="Where to write the regenerated PNG (3D: a .nii.gz file, with its label map beside it as "
            "<name>_label.nii.gz)."
        ),
    ],
    run: Annotated[
        Path | None, typer.Option(help="Run directory (default: the one in the manifest row).")
    ] = None,
) -> None:
    """Re-create one image (PNG) or volume (NIfTI) of a manifest from its recorded seed and settings."""
    from synthmed.artifacts.images import save_png
    from synthmed.artifacts.manifest import read_manifest
    from synthmed.data.volumes import save_nifti
    from synthmed.sampling.pipeline import Pipeline
    from synthmed.sampling.volumes import label_dtype, label_file_beside, regenerate_volume

    rows = [r for r in read_manifest(manifest) if r.get("file") == file]
    if not rows:
        raise SynthmedError(f"no row for '{file}'", path=manifest)
    row = rows[-1]
    pipe = Pipeline.load(
        run or row["run_dir"], device=row["device"], precision=row["precision"], checkpoint=row["checkpoint"]
    )
    if pipe.cfg.data.volume is None:
        save_png(pipe.regenerate(row), out, int(row.get("bit_depth", 8)))
        err.print(f"done: {out}")
        return
    volume, affine, label_map = regenerate_volume(pipe, row)
    save_nifti(volume, affine, out, dtype="float32")
    err.print(f"wrote {out} (the image)", highlight=False, soft_wrap=True)
    if label_map is not None:
        path = label_file_beside(out)
        save_nifti(label_map, affine, path, dtype=label_dtype(label_map))
        err.print(f"wrote {path} (the label map it was generated for)", highlight=False, soft_wrap=True)
