"""The `synthmed` command line: one Typer app assembled from each stage's own commands module."""

from __future__ import annotations

import typer

from synthmed.catalogue.commands import catalogue_app, db_app, export, generate_from_requests
from synthmed.downstream.commands import benchmark_augmentation
from synthmed.evaluation.commands import evaluate
from synthmed.jobs.commands import worker
from synthmed.reporting.commands import demo
from synthmed.sampling.commands import edit_app, generate_command, regenerate
from synthmed.training.commands import distill, presets, split, train
from synthmed.web.commands import serve, users_app

app = typer.Typer(
    help="synthmed: train latent diffusion models on your own medical images and generate labelled "
    "synthetic data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# In the order `synthmed --help` lists them (commands first, then the command groups).
app.command()(train)
app.command()(distill)
app.command()(split)
app.command("generate")(generate_command(generate_from_requests))
app.command()(serve)
app.command()(worker)
app.command()(evaluate)
app.command("benchmark-augmentation")(benchmark_augmentation)
app.command()(regenerate)
app.command()(demo)
app.command()(export)
app.command()(presets)
app.add_typer(edit_app, name="edit")
app.add_typer(db_app, name="db")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(users_app, name="users")
