"""The catalogue: SQLAlchemy 2 models of data sets, trained models, generation runs, samples, studies,
readers, answers, review decisions, regeneration requests, jobs, and the web app's logins (sessions, trusted
browsers, security events). The schema changes only through Alembic
migrations (``synthmed/catalogue/migrations``), which ``synthmed db upgrade`` applies.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints, so migrations can alter them on SQLite (batch mode) and PostgreSQL alike.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("admin", "reader")
ORIGINS = ("real", "synthetic")
REVIEW_STATES = ("pending", "approved", "rejected")
DECISIONS = ("approve", "reject")
STUDY_KINDS = ("turing", "rating")  # forced choice real/synthetic; Likert ratings only
REQUEST_STATES = ("open", "fulfilled")
SECURITY_EVENTS = (
    "login",
    "login_failed",
    "account_locked",
    "address_blocked",
    "logout",
    "user_added",
    "password_changed",
    "deactivated",
    "activated",
    "unlocked",
    "role_changed",
    "sessions_ended",
    "device_distrusted",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_allowed")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    """A person who logs in: an admin (creates studies, reviews, exports) or a reader (answers studies)."""

    __tablename__ = "users"
    __table_args__ = (_one_of("role", ROLES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id; never the password itself
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)  # since the last success
    locked_until: Mapped[datetime | None] = mapped_column(default=None)  # login rate limiting
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A folder of images: real (ingested from the user's files) or synthetic (a generation run's output)."""

    __tablename__ = "datasets"
    __table_args__ = (_one_of("origin", ORIGINS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    origin: Mapped[str] = mapped_column(String(16))
    root: Mapped[str] = mapped_column(Text)  # absolute folder path
    spatial_dims: Mapped[int] = mapped_column(Integer, default=2)
    created: Mapped[datetime] = mapped_column(default=utcnow)

    samples: Mapped[list[Sample]] = relationship(back_populates="dataset")


class TrainedModel(Base):
    """A trained run folder, identified by the checksums of its weights (the manifest's *_sha256)."""

    __tablename__ = "trained_models"
    __table_args__ = (UniqueConstraint("run_dir", "diffusion_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_dir: Mapped[str] = mapped_column(Text)
    autoencoder_sha256: Mapped[str] = mapped_column(String(64))
    diffusion_sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the run's resolved config.yaml
    created: Mapped[datetime] = mapped_column(default=utcnow)


class GenerationRun(Base):
    """One output folder of ``synthmed generate`` (its manifest.jsonl) from one trained model."""

    __tablename__ = "generation_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("trained_models.id"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), unique=True)
    out_dir: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # sampler, steps, guidance, precision
    created: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[TrainedModel] = relationship()
    dataset: Mapped[Dataset] = relationship()


class Sample(Base):
    """One image or volume (real or synthetic) with its label, optional mask and provenance."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "path"),
        _one_of("review_state", REVIEW_STATES),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    generation_run_id: Mapped[int | None] = mapped_column(ForeignKey("generation_runs.id"), default=None)
    path: Mapped[str] = mapped_column(Text)  # relative to the data set's root
    mask_path: Mapped[str | None] = mapped_column(Text, default=None)  # relative to the root
    label: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(Integer, default=None)
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the manifest row, as written
    review_state: Mapped[str] = mapped_column(String(16), default="pending")
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # Synthetic samples (synthmed.catalogue.provenance): when the file was proven to be its manifest row's
    # (kind, sha256, model weights), when regeneration last reproduced it bit for bit, and the memorisation
    # check against the model's training images (None: not checked).
    verified: Mapped[datetime | None] = mapped_column(default=None)
    regenerated: Mapped[datetime | None] = mapped_column(default=None)
    likely_copy: Mapped[bool | None] = mapped_column(Boolean, default=None)
    copy_check: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    dataset: Mapped[Dataset] = relationship(back_populates="samples")

    @property
    def origin(self) -> str:
        return self.dataset.origin

    @property
    def files(self) -> tuple[Path, ...]:
        """Its file below the data set's root; a volume stored one 3D file per contrast: those files in
        contrast order (the further ones under provenance 'contrasts')."""
        extra = self.provenance.get("contrasts") or [] if isinstance(self.provenance, dict) else []
        return tuple(Path(self.dataset.root) / p for p in (self.path, *extra))


class Study(Base):
    """A visual Turing test or a rating study over a seeded mix of real and synthetic samples."""

    __tablename__ = "studies"
    __table_args__ = (_one_of("kind", STUDY_KINDS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="turing")
    seed: Mapped[int] = mapped_column(Integer)
    likert: Mapped[bool] = mapped_column(Boolean, default=True)  # ask the Likert scales with each item
    repeat_fraction: Mapped[float] = mapped_column(default=0.0)  # items shown twice (intra-reader)
    image_size: Mapped[int] = mapped_column(Integer, default=512)  # every served image: this square
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created: Mapped[datetime] = mapped_column(default=utcnow)

    items: Mapped[list[StudyItem]] = relationship(back_populates="study", order_by="StudyItem.id")
    readers: Mapped[list[StudyReader]] = relationship(back_populates="study")


class StudyItem(Base):
    """A sample included in a study; the answer key is the sample's data set origin."""

    __tablename__ = "study_items"
    __table_args__ = (UniqueConstraint("study_id", "sample_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))

    study: Mapped[Study] = relationship(back_populates="items")
    sample: Mapped[Sample] = relationship()


class StudyReader(Base):
    """A reader assigned to a study."""

    __tablename__ = "study_readers"
    __table_args__ = (UniqueConstraint("study_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))

    study: Mapped[Study] = relationship(back_populates="readers")
    user: Mapped[User] = relationship()


class Trial(Base):
    """One position in one reader's seeded order: the item shown there under an opaque random token.

    The token is the only identifier the reader's browser sees; it is fresh per reader and per position,
    so nothing links two readers' trials or a trial to its sample or origin.
    """

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("study_id", "user_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("study_items.id"))
    position: Mapped[int] = mapped_column(Integer)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    repeat_of: Mapped[int | None] = mapped_column(ForeignKey("trials.id"), default=None)
    shown_at: Mapped[datetime | None] = mapped_column(default=None)  # first served; response time

    item: Mapped[StudyItem] = relationship()
    answer: Mapped[Answer | None] = relationship(back_populates="trial")


class Answer(Base):
    """A reader's answer to one trial; at most one per trial (the unique key stops double submits)."""

    __tablename__ = "answers"
    __table_args__ = (
        CheckConstraint("choice IS NULL OR choice IN ('real', 'synthetic')", name="choice_allowed"),
        CheckConstraint("confidence IS NULL OR confidence BETWEEN 1 AND 5", name="confidence_range"),
        CheckConstraint("realism IS NULL OR realism BETWEEN 1 AND 5", name="realism_range"),
        CheckConstraint("anatomy IS NULL OR anatomy BETWEEN 1 AND 5", name="anatomy_range"),
        CheckConstraint(
            "slice_consistency IS NULL OR slice_consistency BETWEEN 1 AND 5", name="slices_range"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), unique=True)
    choice: Mapped[str | None] = mapped_column(String(16), default=None)  # None in rating-only studies
    confidence: Mapped[int | None] = mapped_column(Integer, default=None)  # 1 guess .. 5 certain
    realism: Mapped[int | None] = mapped_column(Integer, default=None)  # Likert 1..5
    anatomy: Mapped[int | None] = mapped_column(Integer, default=None)
    slice_consistency: Mapped[int | None] = mapped_column(Integer, default=None)  # 3D only
    response_ms: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(default=utcnow)

    trial: Mapped[Trial] = relationship(back_populates="answer")


class Decision(Base):
    """An admin's approve/reject of a synthetic sample, with the reason; the latest one counts."""

    __tablename__ = "decisions"
    __table_args__ = (_one_of("decision", DECISIONS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(default=utcnow)


class RegenerationRequest(Base):
    """A rejected sample to generate again with the same conditions and a new seed
    (``synthmed generate --from-requests`` fulfils it)."""

    __tablename__ = "regeneration_requests"
    __table_args__ = (_one_of("status", REQUEST_STATES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    new_seed: Mapped[int | None] = mapped_column(Integer, default=None)
    fulfilled_sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id"), default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    fulfilled: Mapped[datetime | None] = mapped_column(default=None)

    sample: Mapped[Sample] = relationship(foreign_keys=[sample_id])


JOB_KINDS = ("generate", "evaluate", "train")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")


class Job(Base):
    """A generation, evaluation or training run that a worker process executes (``synthmed worker``).

    ``config`` is the command's config object as JSON (GenerateConfig, EvaluateConfig, TrainConfig), so a job
    runs exactly as the command line would. A running job's worker renews ``heartbeat``; a job whose heartbeat
    stops is recovered (queued again or failed, see synthmed.jobs). ``progress`` is what the live view shows.
    """

    __tablename__ = "jobs"
    __table_args__ = (_one_of("kind", JOB_KINDS), _one_of("state", JOB_STATES))

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    started: Mapped[datetime | None] = mapped_column(default=None)
    finished: Mapped[datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)  # host:pid of the running worker
    heartbeat: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)  # output folder, counts, report path
    error: Mapped[str | None] = mapped_column(Text, default=None)
    generation_run_id: Mapped[int | None] = mapped_column(ForeignKey("generation_runs.id"), default=None)


class LoginSession(Base):
    """A login of the web app. The browser holds a random token; only its sha256 is stored, so the table
    opens no session. Ended at logout, password change, deactivation, role change or by an admin; unusable
    after ``expires`` (absolute) or when idle too long (``last_seen``, see synthmed.web.sessions)."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str | None] = mapped_column(String(64), default=None)  # client address at login
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column()
    ended: Mapped[datetime | None] = mapped_column(default=None)
    end_reason: Mapped[str | None] = mapped_column(String(32), default=None)

    user: Mapped[User] = relationship()


class TrustedDevice(Base):
    """A browser that logged in as the user before (a long-lived random cookie, stored as its sha256): its
    logins are not held up by a lock that others' failed guesses put on the account; it has its own limit
    of failures, after which it is no longer trusted."""

    __tablename__ = "trusted_devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column()
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)


class SecurityEvent(Base):
    """Logins, failures, locks and changes to users (who did it, to whom, from where)."""

    __tablename__ = "security_events"
    __table_args__ = (_one_of("event", SECURITY_EVENTS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None, index=True)
    username: Mapped[str | None] = mapped_column(String(64), default=None)  # None: a name that is no user
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)  # the admin acting
    address: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[str] = mapped_column(Text, default="")

    actor: Mapped[User | None] = relationship(foreign_keys=[actor_id])
