"""initial catalogue schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 05:55:26.066585
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("spatial_dims", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("origin IN ('real', 'synthetic')", name=op.f("ck_datasets_origin_allowed")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )
    op.create_table(
        "trained_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=False),
        sa.Column("autoencoder_sha256", sa.String(length=64), nullable=False),
        sa.Column("diffusion_sha256", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trained_models")),
        sa.UniqueConstraint("run_dir", "diffusion_sha256", name=op.f("uq_trained_models_run_dir")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'reader')", name=op.f("ck_users_role_allowed")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "generation_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_generation_runs_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["trained_models.id"], name=op.f("fk_generation_runs_model_id_trained_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_runs")),
        sa.UniqueConstraint("dataset_id", name=op.f("uq_generation_runs_dataset_id")),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("likert", sa.Boolean(), nullable=False),
        sa.Column("repeat_fraction", sa.Double(), nullable=False),
        sa.Column("image_size", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('turing', 'rating')", name=op.f("ck_studies_kind_allowed")),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_studies_created_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("name", name=op.f("uq_studies_name")),
    )
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("generation_run_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("mask_path", sa.Text(), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("review_state", sa.String(length=16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "review_state IN ('pending', 'approved', 'rejected')",
            name=op.f("ck_samples_review_state_allowed"),
        ),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_samples_dataset_id_datasets")),
        sa.ForeignKeyConstraint(
            ["generation_run_id"],
            ["generation_runs.id"],
            name=op.f("fk_samples_generation_run_id_generation_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
        sa.UniqueConstraint("dataset_id", "path", name=op.f("uq_samples_dataset_id")),
    )
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_samples_dataset_id"), ["dataset_id"], unique=False)

    op.create_table(
        "study_readers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_study_readers_study_id_studies"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_study_readers_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_readers")),
        sa.UniqueConstraint("study_id", "user_id", name=op.f("uq_study_readers_study_id")),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("decision IN ('approve', 'reject')", name=op.f("ck_decisions_decision_allowed")),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name=op.f("fk_decisions_sample_id_samples")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_decisions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decisions")),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_decisions_sample_id"), ["sample_id"], unique=False)

    op.create_table(
        "study_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name=op.f("fk_study_items_sample_id_samples")),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_study_items_study_id_studies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_items")),
        sa.UniqueConstraint("study_id", "sample_id", name=op.f("uq_study_items_study_id")),
    )
    with op.batch_alter_table("study_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_items_study_id"), ["study_id"], unique=False)

    op.create_table(
        "regeneration_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("new_seed", sa.Integer(), nullable=True),
        sa.Column("fulfilled_sample_id", sa.Integer(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fulfilled", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'fulfilled')", name=op.f("ck_regeneration_requests_status_allowed")
        ),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["decisions.id"], name=op.f("fk_regeneration_requests_decision_id_decisions")
        ),
        sa.ForeignKeyConstraint(
            ["fulfilled_sample_id"],
            ["samples.id"],
            name=op.f("fk_regeneration_requests_fulfilled_sample_id_samples"),
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["samples.id"], name=op.f("fk_regeneration_requests_sample_id_samples")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regeneration_requests")),
        sa.UniqueConstraint("decision_id", name=op.f("uq_regeneration_requests_decision_id")),
    )
    with op.batch_alter_table("regeneration_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_regeneration_requests_sample_id"), ["sample_id"], unique=False)

    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("repeat_of", sa.Integer(), nullable=True),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["item_id"], ["study_items.id"], name=op.f("fk_trials_item_id_study_items")),
        sa.ForeignKeyConstraint(["repeat_of"], ["trials.id"], name=op.f("fk_trials_repeat_of_trials")),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_trials_study_id_studies"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_trials_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.UniqueConstraint("study_id", "user_id", "position", name=op.f("uq_trials_study_id")),
        sa.UniqueConstraint("token", name=op.f("uq_trials_token")),
    )
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_trials_study_id"), ["study_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_trials_user_id"), ["user_id"], unique=False)

    op.create_table(
        "answers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=True),
        sa.Column("confidence", sa.Integer(), nullable=True),
        sa.Column("realism", sa.Integer(), nullable=True),
        sa.Column("anatomy", sa.Integer(), nullable=True),
        sa.Column("slice_consistency", sa.Integer(), nullable=True),
        sa.Column("response_ms", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "choice IS NULL OR choice IN ('real', 'synthetic')", name=op.f("ck_answers_choice_allowed")
        ),
        sa.CheckConstraint(
            "anatomy IS NULL OR anatomy BETWEEN 1 AND 5", name=op.f("ck_answers_anatomy_range")
        ),
        sa.CheckConstraint(
            "confidence IS NULL OR confidence BETWEEN 1 AND 5", name=op.f("ck_answers_confidence_range")
        ),
        sa.CheckConstraint(
            "realism IS NULL OR realism BETWEEN 1 AND 5", name=op.f("ck_answers_realism_range")
        ),
        sa.CheckConstraint(
            "slice_consistency IS NULL OR slice_consistency BETWEEN 1 AND 5",
            name=op.f("ck_answers_slices_range"),
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name=op.f("fk_answers_trial_id_trials"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_answers")),
        sa.UniqueConstraint("trial_id", name=op.f("uq_answers_trial_id")),
    )


def downgrade() -> None:
    op.drop_table("answers")
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trials_user_id"))
        batch_op.drop_index(batch_op.f("ix_trials_study_id"))

    op.drop_table("trials")
    with op.batch_alter_table("regeneration_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_regeneration_requests_sample_id"))

    op.drop_table("regeneration_requests")
    with op.batch_alter_table("study_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_items_study_id"))

    op.drop_table("study_items")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_decisions_sample_id"))

    op.drop_table("decisions")
    op.drop_table("study_readers")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_samples_dataset_id"))

    op.drop_table("samples")
    op.drop_table("studies")
    op.drop_table("generation_runs")
    op.drop_table("users")
    op.drop_table("trained_models")
    op.drop_table("datasets")
