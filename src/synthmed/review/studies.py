"""Reader studies, independent of HTTP: create a study, give each reader a seeded order of opaque trials,
serve the next one, record answers, and collect them for the statistics.

Blinding starts here: the browser only ever sees a trial's token (random, fresh per reader and position),
and items, trials and rendered images are created in a shuffled order, so no id, timestamp or file order
follows the origin. Every image of a study is rendered at one common native resolution (the lowest among
its images), so sharpness does not tell a 64 px synthetic image from a 224 px real one either.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from synthmed.catalogue.db import insert_or_ignore
from synthmed.catalogue.models import (
    Answer,
    Dataset,
    Sample,
    Study,
    StudyItem,
    StudyReader,
    Trial,
    User,
    utcnow,
)
from synthmed.config import StudyConfig
from synthmed.errors import SynthmedError
from synthmed.review.render import Native, native_geometry, render_study
from synthmed.review.stats import AnswerRow
from synthmed.review.times import as_utc

TOKEN_BYTES = 24  # token_urlsafe(24): always 32 characters, so its length says nothing either
LIKERT = range(1, 6)
HEADERS_PER_SET = 16  # images whose headers describe a data set on the study form


class TrialNotFound(SynthmedError):
    """No trial with this token for this reader and study (the web app answers 404)."""


def _dataset(session: Session, name: str, origin: str, field: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise SynthmedError(f"no data set named {name!r} in the catalogue: import it first", field=field)
    if dataset.origin != origin:
        raise SynthmedError(f"data set {name!r} is {dataset.origin}, not {origin}", field=field)
    return dataset


def _draw(session: Session, dataset: Dataset, n: int, rng: np.random.Generator, field: str) -> list[Sample]:
    query = select(Sample).where(Sample.dataset_id == dataset.id).order_by(Sample.id)
    if dataset.origin == "synthetic":
        query = query.where(Sample.review_state != "rejected")  # sent back to the generator
    pool = list(session.scalars(query))
    if n > len(pool):
        raise SynthmedError(
            f"asks for {n} samples but data set {dataset.name!r} has {len(pool)} usable ones: lower it",
            field=field,
        )
    return [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]


def _readers(session: Session, names: list[str]) -> list[User]:
    users = {u.username: u for u in session.scalars(select(User).where(User.username.in_(names)))}
    for name in names:
        user = users.get(name)
        if user is None or not user.active:
            raise SynthmedError(f"no active user {name!r}: add it with `synthmed users add`", field="readers")
        if user.role != "reader":
            # An admin can see the answer key, so it cannot take a blinded study.
            raise SynthmedError(f"user {name!r} is an {user.role}, not a reader", field="readers")
    return [users[n] for n in names]


@dataclass(frozen=True)
class SetResolution:
    """The native resolutions (longest side; 3D: in-plane voxels) and bit depths of a data set's images."""

    name: str
    side_min: int
    side_max: int
    bits: tuple[int, ...]

    def describe(self) -> str:
        sides = f"{self.side_min}" if self.side_min == self.side_max else f"{self.side_min}-{self.side_max}"
        return f"{sides} px, {'/'.join(map(str, self.bits))}-bit"


def set_resolution(name: str, natives: Sequence[Native]) -> SetResolution:
    sides = [n.side for n in natives]
    return SetResolution(name, min(sides), max(sides), tuple(sorted({n.bits for n in natives})))


def dataset_resolution(session: Session, dataset: Dataset) -> SetResolution | None:
    """From the headers of a data set's first images (the study form's hint); None when unreadable."""
    paths = session.scalars(
        select(Sample.path).where(Sample.dataset_id == dataset.id).order_by(Sample.id).limit(HEADERS_PER_SET)
    ).all()
    try:
        natives = [native_geometry(Path(dataset.root) / path, dataset.spatial_dims) for path in paths]
    except SynthmedError:
        return None
    return set_resolution(dataset.name, natives) if natives else None


def resolution_warnings(real: SetResolution, synthetic: SetResolution, size: int) -> list[str]:
    """What differs between two sets' native resolutions or bit depths, and what the study does about it."""
    found = []
    sets = f"{real.name} is {real.describe()}, {synthetic.name} {synthetic.describe()}"
    common = min(real.side_min, synthetic.side_min, size)
    if (real.side_min, real.side_max) != (synthetic.side_min, synthetic.side_max):
        found.append(
            f"Native resolutions differ ({sets}): every image is shown at {common} px, the lowest, larger "
            "ones downsampled with the same filter, so that sharpness alone does not give the origin away."
        )
    if real.bits != synthetic.bits:
        found.append(
            f"Bit depths differ ({sets}): both are windowed to 8 bits for display; look at a few items for "
            "banding in the shallower set before inviting readers."
        )
    return found


def create_study(session: Session, cfg: StudyConfig, created_by: int, cache: Path) -> Study:
    """Draw the samples with the study seed, render their blinded images and give every reader an order."""
    if session.scalar(select(Study.id).where(Study.name == cfg.name)) is not None:
        raise SynthmedError(f"a study named {cfg.name!r} exists already: choose another name", field="name")
    real = _dataset(session, cfg.real_dataset, "real", "real_dataset")
    synthetic = _dataset(session, cfg.synthetic_dataset, "synthetic", "synthetic_dataset")
    if real.spatial_dims != synthetic.spatial_dims:
        raise SynthmedError(
            f"{real.name!r} is {real.spatial_dims}D but {synthetic.name!r} is {synthetic.spatial_dims}D",
            field="synthetic_dataset",
        )
    readers = _readers(session, cfg.readers)
    rng = np.random.default_rng(cfg.seed)
    drawn = {
        real: _draw(session, real, cfg.n_real, rng, "n_real"),
        synthetic: _draw(session, synthetic, cfg.n_synthetic, rng, "n_synthetic"),
    }
    samples = [sample for found in drawn.values() for sample in found]
    study = Study(
        name=cfg.name,
        kind=cfg.kind,
        seed=cfg.seed,
        likert=cfg.likert,
        repeat_fraction=cfg.repeat_fraction,
        image_size=cfg.image_size,
        created_by=created_by,
    )
    session.add(study)
    # Shuffled, so item ids (and the cache's file times) do not follow the origin.
    items = [StudyItem(study=study, sample=samples[i]) for i in rng.permutation(len(samples))]
    session.add_all(items)
    session.add_all(StudyReader(study=study, user=user) for user in readers)
    session.flush()
    files = [(item.id, item.sample.files) for item in items]
    native, info = _common_resolution(drawn, cfg.image_size)
    render_study(cache, study.id, files, real.spatial_dims, cfg.image_size, native, info)
    for user in readers:
        add_trials(session, study, items, user.id)
    return study


def _common_resolution(drawn: dict[Dataset, list[Sample]], size: int) -> tuple[int, dict]:
    """The native resolution every image of the study is brought to (the lowest among the drawn images,
    at most the display size), and what the admin's study page says about it."""
    real, synthetic = (
        set_resolution(d.name, [native_geometry(s.files, d.spatial_dims) for s in samples])
        for d, samples in drawn.items()
    )
    native = min(size, real.side_min, synthetic.side_min)
    sets = [asdict(r) | {"text": r.describe()} for r in (real, synthetic)]
    return native, {"native": native, "sets": sets, "warnings": resolution_warnings(real, synthetic, size)}


def reader_order(study: Study, n_items: int, user_id: int) -> list[tuple[int, int | None]]:
    """A reader's seeded order: (item index, index in this list of the first showing or None).

    The seed comes from the study seed and the reader id, so each reader has their own reproducible
    order. Repeated items are shown again at a random later position, not straight after the first
    showing when the study is long enough to avoid it.
    """
    rng = np.random.default_rng([study.seed, user_id])
    order: list[int] = [int(i) for i in rng.permutation(n_items)]
    n_repeats = round(study.repeat_fraction * n_items)
    repeated = [int(i) for i in rng.choice(n_items, size=n_repeats, replace=False)]
    for item in repeated:
        first = order.index(item)
        low = first + 2 if first + 2 <= len(order) else first + 1
        order.insert(int(rng.integers(low, len(order) + 1)), item)
    first_at: dict[int, int] = {}  # an item's second appearance is the repeat of its first
    plan = []
    for pos, item in enumerate(order):
        plan.append((item, first_at.get(item)))
        first_at.setdefault(item, pos)
    return plan


def add_trials(session: Session, study: Study, items: list[StudyItem], user_id: int) -> list[Trial]:
    """One reader's trials, each under a fresh opaque token."""
    by_id = sorted(items, key=lambda item: item.id)  # the order the seed works on: stable across sessions
    plan = reader_order(study, len(by_id), user_id)
    trials = [
        Trial(
            study_id=study.id,
            user_id=user_id,
            item_id=by_id[item].id,
            position=pos,
            token=secrets.token_urlsafe(TOKEN_BYTES),
        )
        for pos, (item, _) in enumerate(plan)
    ]
    session.add_all(trials)
    session.flush()
    for trial, (_, first) in zip(trials, plan, strict=True):
        if first is not None:
            trial.repeat_of = trials[first].id
    return trials


@dataclass(frozen=True)
class Progress:
    answered: int
    total: int


def progress(session: Session, study_id: int, user_id: int) -> Progress:
    total, answered = session.execute(
        select(func.count(Trial.id), func.count(Answer.id))
        .select_from(Trial)
        .outerjoin(Answer, Answer.trial_id == Trial.id)
        .where(Trial.study_id == study_id, Trial.user_id == user_id)
    ).one()
    return Progress(answered=answered, total=total)


def next_trial(session: Session, study_id: int, user_id: int) -> Trial | None:
    """The reader's first unanswered trial (resume where they left off), marked shown; None when done."""
    trial = session.scalar(
        select(Trial)
        .outerjoin(Answer, Answer.trial_id == Trial.id)
        .where(Trial.study_id == study_id, Trial.user_id == user_id, Answer.id.is_(None))
        .order_by(Trial.position)
        .limit(1)
    )
    if trial is not None and trial.shown_at is None:
        trial.shown_at = utcnow()
    return trial


def trial_for(session: Session, token: str, user_id: int, study_id: int | None = None) -> Trial:
    """The reader's own trial with this token; another reader's token is as unknown as a made-up one."""
    query = select(Trial).where(Trial.token == token, Trial.user_id == user_id)
    if study_id is not None:
        query = query.where(Trial.study_id == study_id)
    trial = session.scalar(query)
    if trial is None:
        raise TrialNotFound("no such trial", field="token")
    return trial


def is_answered(session: Session, study_id: int, user_id: int, token: str) -> bool:
    """Whether the reader's trial with this token has its answer already (False for an unknown token)."""
    return (
        session.scalar(
            select(Answer.id)
            .join(Trial, Answer.trial_id == Trial.id)
            .where(Trial.token == token, Trial.user_id == user_id, Trial.study_id == study_id)
        )
        is not None
    )


@dataclass(frozen=True)
class AnswerInput:
    choice: str | None = None
    confidence: int | None = None
    realism: int | None = None
    anatomy: int | None = None
    slice_consistency: int | None = None


def is_3d(session: Session, study_id: int) -> bool:
    dims = session.scalar(
        select(Dataset.spatial_dims)
        .join(Sample, Sample.dataset_id == Dataset.id)
        .join(StudyItem, StudyItem.sample_id == Sample.id)
        .where(StudyItem.study_id == study_id)
        .limit(1)
    )
    return dims == 3


def validate_answer(study: Study, three_d: bool, values: AnswerInput) -> None:
    """What each study asks: turing -> choice + confidence; likert -> realism, anatomy (3D: slices)."""
    wanted = {
        "choice": study.kind == "turing",
        "confidence": study.kind == "turing",
        "realism": study.likert,
        "anatomy": study.likert,
        "slice_consistency": study.likert and three_d,
    }
    for field, needed in wanted.items():
        value = getattr(values, field)
        if not needed and value is not None:
            raise SynthmedError("this study does not ask it: leave it out", field=field)
        if needed and value is None:
            raise SynthmedError("missing: answer every question", field=field)
    if values.choice is not None and values.choice not in ("real", "synthetic"):
        raise SynthmedError("must be 'real' or 'synthetic'", field="choice")
    for field in ("confidence", "realism", "anatomy", "slice_consistency"):
        value = getattr(values, field)
        if value is not None and value not in LIKERT:
            raise SynthmedError("must be an integer from 1 to 5", field=field)


def record_answer(session: Session, study_id: int, user_id: int, token: str, values: AnswerInput) -> Answer:
    """Store the reader's answer to a shown trial; a repeated submit returns the first answer unchanged.

    INSERT ... ON CONFLICT DO NOTHING on the unique trial id lets concurrent double submits race safely
    on SQLite and PostgreSQL alike: one row wins, nothing raises. The response time is measured on the
    server, from when the trial was first served.
    """
    trial = trial_for(session, token, user_id, study_id)
    existing = session.scalar(select(Answer).where(Answer.trial_id == trial.id))
    if existing is not None:
        return existing
    if trial.shown_at is None:
        raise TrialNotFound("this trial has not been shown yet", field="token")
    study = session.get_one(Study, study_id)
    validate_answer(study, is_3d(session, study_id), values)
    now = utcnow()
    response_ms = max(0, round((now - as_utc(trial.shown_at)).total_seconds() * 1000))
    answer = {"trial_id": trial.id, "response_ms": response_ms, "created": now, **vars(values)}
    insert_or_ignore(session, Answer, answer, ["trial_id"])
    return session.scalars(select(Answer).where(Answer.trial_id == trial.id)).one()


def answers_for_stats(session: Session, study_id: int) -> list[AnswerRow]:
    """Every answer of a study with its answer key, in the form the statistics take."""
    rows = session.execute(
        select(User.username, Trial.item_id, Dataset.origin, Answer, Trial.repeat_of)
        .join(Trial, Answer.trial_id == Trial.id)
        .join(User, User.id == Trial.user_id)
        .join(StudyItem, StudyItem.id == Trial.item_id)
        .join(Sample, Sample.id == StudyItem.sample_id)
        .join(Dataset, Dataset.id == Sample.dataset_id)
        .where(Trial.study_id == study_id)
        .order_by(User.username, Trial.position)
    ).all()
    return [
        AnswerRow(
            reader=username,
            item=item,
            truth=origin,
            choice=answer.choice,
            confidence=answer.confidence,
            realism=answer.realism,
            anatomy=answer.anatomy,
            slice_consistency=answer.slice_consistency,
            repeat=repeat_of is not None,
            response_ms=answer.response_ms,
        )
        for username, item, origin, answer, repeat_of in rows
    ]
