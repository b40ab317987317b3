"""Reader studies without HTTP: seeded draws and orders, resume, answers (validation, idempotent double
submits, server-side response times, concurrency on SQLite and PostgreSQL), blinded rendering, decisions."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from web_support import STUDY, add_volume_datasets, build_catalogue, make_study, png_chunks

from synthmed.catalogue.db import make_engine, session_factory, transaction
from synthmed.catalogue.models import (
    Answer,
    Decision,
    RegenerationRequest,
    Sample,
    Study,
    StudyItem,
    Trial,
    User,
    utcnow,
)
from synthmed.config import StudyConfig
from synthmed.errors import SynthmedError
from synthmed.review import render
from synthmed.review.decisions import decide, undo_last
from synthmed.review.studies import (
    AnswerInput,
    TrialNotFound,
    answers_for_stats,
    next_trial,
    progress,
    reader_order,
    record_answer,
)

TURING = AnswerInput(choice="synthetic", confidence=4, realism=3, anatomy=5)


@pytest.fixture
def catalogue(tmp_path: Path, kermany: Path):
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    cat = build_catalogue(url, kermany, tmp_path, n_real=6, n_synthetic=6, readers=["r1", "r2", "r3"])
    engine = make_engine(url)
    yield cat, session_factory(engine), tmp_path / "cache"
    engine.dispose()


def user_id(session, name: str) -> int:
    return session.scalar(select(User.id).where(User.username == name))


def show_and_answer(factory, study_id: int, uid: int, values: AnswerInput = TURING) -> Trial:
    with transaction(factory) as session:
        trial = next_trial(session, study_id, uid)
    with transaction(factory) as session:
        record_answer(session, study_id, uid, trial.token, values)
    return trial


def test_draw_is_seeded_and_items_shuffled(catalogue) -> None:
    cat, factory, cache = catalogue
    first = make_study(cat.url, cache, name="a", seed=11)
    again = make_study(cat.url, cache, name="b", seed=11)
    other = make_study(cat.url, cache, name="c", seed=12)
    with factory() as session:

        def drawn(study_id: int) -> list[tuple[int, str]]:
            items = session.scalars(
                select(StudyItem).where(StudyItem.study_id == study_id).order_by(StudyItem.id)
            )
            return [(item.sample_id, item.sample.origin) for item in items]

        a, b, c = drawn(first), drawn(again), drawn(other)
    assert a == b  # same seed: same samples in the same (shuffled) order
    assert sorted(a) != sorted(c)
    assert Counter(origin for _, origin in a) == {"real": 4, "synthetic": 4}
    origins = [origin for _, origin in a]
    assert origins != sorted(origins), "item ids must not follow the origin"


def test_reader_orders_are_seeded_per_reader_with_later_repeats(catalogue) -> None:
    cat, factory, cache = catalogue
    study_id = make_study(cat.url, cache, repeat_fraction=0.5)
    with factory() as session:
        study = session.get(Study, study_id)
        orders = {}
        for name in ("r1", "r2"):
            uid = user_id(session, name)
            trials = session.scalars(
                select(Trial).where(Trial.study_id == study_id, Trial.user_id == uid).order_by(Trial.position)
            ).all()
            assert [t.position for t in trials] == list(range(8 + 4))
            by_id = {t.id: t for t in trials}
            repeats = [t for t in trials if t.repeat_of is not None]
            assert len(repeats) == 4
            for t in repeats:
                first = by_id[t.repeat_of]
                assert first.item_id == t.item_id and first.repeat_of is None
                assert t.position > first.position + 1  # later, and not straight after
            assert Counter(t.item_id for t in trials).most_common(1)[0][1] == 2
            orders[name] = [t.item_id for t in trials]
            assert reader_order(study, 8, uid) == reader_order(study, 8, uid)
        tokens = session.scalars(select(Trial.token)).all()
    assert orders["r1"] != orders["r2"]
    assert len(set(tokens)) == len(tokens) and {len(t) for t in tokens} == {32}


def test_next_trial_resumes_and_progress_counts(catalogue) -> None:
    cat, factory, cache = catalogue
    study_id = make_study(cat.url, cache, repeat_fraction=0.0)
    with transaction(factory) as session:
        uid = user_id(session, "r1")
        first = next_trial(session, study_id, uid)
        assert first.position == 0 and first.shown_at is not None
    with transaction(factory) as session:
        again = next_trial(session, study_id, uid)
        assert again.id == first.id  # not answered: shown again, first showing time kept
        assert abs(again.shown_at.replace(tzinfo=None) - first.shown_at.replace(tzinfo=None)) < timedelta(
            milliseconds=1
        )
        record_answer(session, study_id, uid, again.token, TURING)
    with transaction(factory) as session:
        assert next_trial(session, study_id, uid).position == 1
        assert progress(session, study_id, uid).answered == 1
        assert progress(session, study_id, uid).total == 8


def test_double_submit_keeps_the_first_answer(catalogue) -> None:
    cat, factory, cache = catalogue
    study_id = make_study(cat.url, cache)
    with factory() as session:
        uid = user_id(session, "r1")
    trial = show_and_answer(factory, study_id, uid)
    with transaction(factory) as session:
        answer = record_answer(session, study_id, uid, trial.token, AnswerInput("real", 1, 1, 1))
        assert answer.choice == "synthetic" and answer.confidence == 4
    with factory() as session:
        assert session.scalar(select(func.count(Answer.id))) == 1


def test_response_time_is_measured_on_the_server(catalogue) -> None:
    cat, factory, cache = catalogue
    study_id = make_study(cat.url, cache)
    with transaction(factory) as session:
        uid = user_id(session, "r1")
        trial = next_trial(session, study_id, uid)
        trial.shown_at = utcnow() - timedelta(seconds=2.5)
    with transaction(factory) as session:
        answer = record_answer(session, study_id, uid, trial.token, TURING)
        assert 2500 <= answer.response_ms < 60_000


@pytest.mark.parametrize(
    ("values", "field"),
    [
        (AnswerInput(None, 3, 3, 3), "choice"),
        (AnswerInput("maybe", 3, 3, 3), "choice"),
        (AnswerInput("real", 6, 3, 3), "confidence"),
        (AnswerInput("real", 0, 3, 3), "confidence"),
        (AnswerInput("real", 3, None, 3), "realism"),
        (AnswerInput("real", 3, 3, 3, slice_consistency=3), "slice_consistency"),  # a 2D study
    ],
)
def test_invalid_answers_are_refused(catalogue, values: AnswerInput, field: str) -> None:
    cat, factory, cache = catalogue
    study_id = make_study(cat.url, cache)
    with transaction(factory) as session:
        uid = user_id(session, "r1")
        token = next_trial(session, study_id, uid).token
    with pytest.raises(SynthmedError, match=field), transaction(factory) as session:
        record_answer(session, study_id, uid, token, values)
    with factory() as session:
        assert session.scalar(select(func.count(Answer.id))) == 0


def test_rating_study_takes_likert_only(catalogue) -> None:
    cat, factory, cache = catalogue
    study_id = make_study(cat.url, cache, kind="rating")
    with factory() as session:
        uid = user_id(session, "r1")
    with pytest.raises(SynthmedError, match="choice"):
        show_and_answer(factory, study_id, uid)
    show_and_answer(factory, study_id, uid, AnswerInput(realism=2, anatomy=4))


def test_tokens_are_private_and_must_have_been_shown(catalogue) -> None:
    cat, factory, cache = catalogue
    study_id = make_study(cat.url, cache)
    with transaction(factory) as session:
        r1, r2 = user_id(session, "r1"), user_id(session, "r2")
        shown = next_trial(session, study_id, r1).token
        unshown = session.scalar(select(Trial.token).where(Trial.user_id == r1, Trial.position == 5))
    with pytest.raises(TrialNotFound), transaction(factory) as session:
        record_answer(session, study_id, r2, shown, TURING)  # another reader's token
    with pytest.raises(TrialNotFound), transaction(factory) as session:
        record_answer(session, study_id, r1, unshown, TURING)


def test_answers_for_stats_carry_truth_and_repeats(catalogue) -> None:
    cat, factory, cache = catalogue
    study_id = make_study(cat.url, cache, repeat_fraction=0.5)
    with factory() as session:
        uid = user_id(session, "r1")
    for _ in range(12):
        show_and_answer(factory, study_id, uid)
    with factory() as session:
        rows = answers_for_stats(session, study_id)
        truth = {
            item.id: item.sample.origin
            for item in session.scalars(select(StudyItem).where(StudyItem.study_id == study_id))
        }
    assert len(rows) == 12 and sum(r.repeat for r in rows) == 4
    assert all(r.reader == "r1" and r.truth == truth[r.item] for r in rows)
    assert Counter(r.truth for r in rows if not r.repeat) == {"real": 4, "synthetic": 4}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"real_dataset": "kermany-syn"}, "is synthetic, not real"),
        ({"synthetic_dataset": "nope"}, "no data set named 'nope'"),
        ({"n_real": 7}, "asks for 7 samples"),
        ({"readers": ["admin"]}, "is an admin, not a reader"),
        ({"readers": ["ghost"]}, "no active user 'ghost'"),
    ],
)
def test_create_study_refuses_bad_input(catalogue, overrides: dict, message: str) -> None:
    cat, factory, cache = catalogue
    with pytest.raises(SynthmedError, match=message):
        make_study(cat.url, cache, **overrides)
    with factory() as session:
        assert session.scalar(select(func.count(Study.id))) == 0
    assert not any(cache.glob("study_*")) if cache.exists() else True


def test_duplicate_study_name_and_rating_without_likert_are_refused(catalogue) -> None:
    cat, _, cache = catalogue
    make_study(cat.url, cache)
    with pytest.raises(SynthmedError, match="exists already"):
        make_study(cat.url, cache)
    with pytest.raises(ValueError, match="Likert"):
        StudyConfig.model_validate(STUDY | {"kind": "rating", "likert": False})


def test_blinded_encoding_has_one_length_and_no_metadata(kermany: Path, tmp_path: Path) -> None:
    jpeg = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[0]
    wide = tmp_path / "wide.png"
    Image.open(jpeg).convert("L").crop((0, 50, 224, 150)).save(wide, pnginfo=None)
    planes = [render.render_image(jpeg, 96), render.render_image(wide, 96)]
    encoded = [render.encode_png(p) for p in planes]
    assert len(encoded[0]) == len(encoded[1])
    assert {c for c, _ in png_chunks(encoded[0])} == {b"IHDR", b"IDAT", b"IEND"}
    assert png_chunks(encoded[0])[0] == png_chunks(encoded[1])[0]  # same IHDR: size, 8-bit greyscale
    assert png_chunks(encoded[0])[0][1][8:10] == b"\x08\x00"
    for plane in planes:
        assert plane.shape == (96, 96) and plane.dtype == np.uint8 and plane.max() == 255
    # The wide image keeps its aspect ratio: zero rows above and below it.
    assert planes[1][:20].max() == 0 and planes[1][-20:].max() == 0 and planes[1][48].max() > 0


def test_volumes_render_to_one_slice_count(hippocampus: Path, tmp_path: Path) -> None:
    a, b = sorted((hippocampus / "images").glob("*.nii.gz"))[:2]
    slices = render.render_study(tmp_path, 1, [(1, a), (2, b)], spatial_dims=3, size=64)
    assert slices == max(render.axial_slices(a), render.axial_slices(b))
    assert render.slice_count(tmp_path, 1, 1) == render.slice_count(tmp_path, 1, 2) == slices
    lengths = {p.stat().st_size for p in (tmp_path / "study_1").rglob("*.png")}
    assert len(lengths) == 1
    with pytest.raises(SynthmedError, match="NIfTI"):
        render.render_study(tmp_path, 2, [(1, a), (2, tmp_path / "x.png")], spatial_dims=3, size=64)
    assert not (tmp_path / "study_2").exists()


def test_multi_contrast_volumes_show_their_contrasts_side_by_side(hippocampus: Path, tmp_path: Path) -> None:
    import nibabel as nib

    a, b = sorted((hippocampus / "images").glob("*.nii.gz"))[:2]
    img = nib.load(a)
    t1 = np.asarray(img.dataobj, dtype=np.float32)
    two = tmp_path / "two.nii.gz"  # a second contrast in other units: windowed on its own
    nib.save(nib.Nifti1Image(np.stack([t1, 1000 + 3 * t1.max() - 3 * t1], -1), img.affine), two)
    planes = render.render_volume(two, 64, 20)
    single = render.render_volume(a, 64, 20)
    assert planes.shape == (20, 64, 128) and np.array_equal(planes[:, :, :64], single)
    assert np.abs(planes[:, :, 64:].astype(int) - single).mean() > 50  # the inverted contrast, full range
    assert render.render_study(tmp_path / "c", 1, [(1, two), (2, two)], spatial_dims=3, size=64) > 0
    with pytest.raises(SynthmedError, match="same number of contrasts"):
        render.render_study(tmp_path / "c", 2, [(1, two), (2, b)], spatial_dims=3, size=64)


def test_3d_study_asks_slice_consistency(catalogue, hippocampus: Path) -> None:
    cat, factory, cache = catalogue
    real, syn = add_volume_datasets(cat.url, hippocampus, cache.parent, 2)
    study_id = make_study(cat.url, cache, real_dataset=real, synthetic_dataset=syn, n_real=2, n_synthetic=2)
    with factory() as session:
        uid = user_id(session, "r1")
    with pytest.raises(SynthmedError, match="slice_consistency"):
        show_and_answer(factory, study_id, uid)
    trial = show_and_answer(factory, study_id, uid, AnswerInput("real", 2, 3, 3, slice_consistency=4))
    assert render.slice_count(cache, study_id, trial.item_id) > 1


def test_decisions_and_regeneration_requests(catalogue) -> None:
    _, factory, _ = catalogue
    with transaction(factory) as session:
        admin = session.scalar(select(User.id).where(User.role == "admin"))
        synthetic = session.scalars(select(Sample).where(Sample.seed.is_not(None)).order_by(Sample.id)).all()
        real = session.scalar(select(Sample).where(Sample.seed.is_(None)))
        with pytest.raises(SynthmedError, match="reason"):
            decide(session, synthetic[0].id, admin, "reject", "  ")
        with pytest.raises(SynthmedError, match="only synthetic"):
            decide(session, real.id, admin, "approve")
        with pytest.raises(SynthmedError, match="decision"):
            decide(session, synthetic[0].id, admin, "maybe")
        decide(session, synthetic[0].id, admin, "approve")
        decide(session, synthetic[1].id, admin, "reject", "rib cage melts into the heart")
        decide(session, synthetic[1].id, admin, "reject", "still wrong")  # one open request, not two
        decide(session, synthetic[2].id, admin, "reject", "blurred")
        decide(session, synthetic[2].id, admin, "approve", "on second look, fine")
    with factory() as session:
        states = {s.id: s.review_state for s in session.scalars(select(Sample))}
        requests = session.scalars(select(RegenerationRequest)).all()
        assert session.scalar(select(func.count(Decision.id))) == 5
    assert states[synthetic[0].id] == "approved" and states[synthetic[1].id] == "rejected"
    assert states[synthetic[2].id] == "approved"
    assert [(r.sample_id, r.status) for r in requests] == [(synthetic[1].id, "open")]


def test_undo_restores_the_state_and_request_before_the_last_decision(catalogue) -> None:
    _, factory, _ = catalogue
    with transaction(factory) as session:
        admin = session.scalar(select(User.id).where(User.role == "admin"))
        other = User(username="admin2", role="admin", password_hash="x")
        session.add(other)
        session.flush()
        first, second = session.scalars(
            select(Sample).where(Sample.seed.is_not(None)).order_by(Sample.id)
        ).all()[:2]
        with pytest.raises(SynthmedError, match="no decision of yours"):
            undo_last(session, first.id, admin)
        decide(session, first.id, admin, "reject", "blurred")
        decide(session, first.id, admin, "approve")  # drops the open request
        assert undo_last(session, first.id, admin) == "rejected"  # ... which the undo asks for again
        open_requests = session.scalars(
            select(RegenerationRequest).where(RegenerationRequest.status == "open")
        )
        assert [r.sample_id for r in open_requests] == [first.id]
        assert undo_last(session, first.id, admin) == "pending"
        assert session.scalars(select(RegenerationRequest)).all() == []
        decide(session, second.id, admin, "reject", "noise")
        with pytest.raises(SynthmedError, match="no decision of yours"):
            undo_last(session, second.id, other.id)  # another admin's decision stands
        session.scalars(select(RegenerationRequest)).one().status = "fulfilled"
        with pytest.raises(SynthmedError, match="replacement was generated"):
            undo_last(session, second.id, admin)
        assert session.get(Sample, second.id).review_state == "rejected"


def test_concurrent_readers_lose_and_duplicate_nothing(
    catalogue_url: str, kermany: Path, tmp_path: Path
) -> None:
    """20 readers answer 50 items each at the same time; every 5th answer is submitted twice at once."""
    names = [f"reader{i:02d}" for i in range(20)]
    build_catalogue(catalogue_url, kermany, tmp_path, n_real=25, n_synthetic=25, readers=names)
    engine = make_engine(catalogue_url)
    factory = session_factory(engine)
    study_id = make_study(
        catalogue_url, tmp_path / "cache", n_real=25, n_synthetic=25, readers=names, repeat_fraction=0
    )
    with factory() as session:
        ids = [user_id(session, n) for n in names]
    errors: list[BaseException] = []

    def submit(uid: int, token: str) -> None:
        try:
            with transaction(factory) as session:
                record_answer(session, study_id, uid, token, TURING)
        except BaseException as exc:
            errors.append(exc)

    def reader(uid: int) -> None:
        try:
            for k in range(50):
                with transaction(factory) as session:
                    token = next_trial(session, study_id, uid).token
                if k % 5 == 0:  # a double click: two requests racing for the same trial
                    twin = threading.Thread(target=submit, args=(uid, token))
                    twin.start()
                    submit(uid, token)
                    twin.join()
                else:
                    submit(uid, token)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(uid,)) for uid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    with factory() as session:
        answers = session.execute(select(Answer.trial_id)).scalars().all()
        trials = session.scalars(select(Trial.id).where(Trial.study_id == study_id)).all()
    engine.dispose()
    assert len(answers) == 1000 and len(set(answers)) == 1000
    assert set(answers) == set(trials)
