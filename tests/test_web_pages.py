"""The review web app's pages: a reader works through a study (no feedback, resume, double submits), the
admin creates studies, reviews samples and reads the statistics; 3D trials; the users/serve commands."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner
from web_support import (
    add_volume_datasets,
    build_catalogue,
    csrf_of,
    fast_hasher,
    make_client,
    make_study,
)

from synthmed.catalogue.db import make_engine, session_factory
from synthmed.catalogue.models import Answer, RegenerationRequest, Sample, Study, User
from synthmed.cli import app as cli
from synthmed.config import ServeConfig
from synthmed.review.stats import statistics_csv, study_statistics
from synthmed.review.studies import answers_for_stats
from synthmed.web import auth
from synthmed.web.app import create_app

TOKEN = re.compile(r'name="token" value="([^"]+)"')
ANSWER = {"choice": "synthetic", "confidence": "4", "realism": "3", "anatomy": "4"}


@pytest.fixture(autouse=True)
def _fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "hasher", fast_hasher)


@pytest.fixture
def site(catalogue_url: str, tmp_path: Path, kermany: Path):
    """The app on SQLite and on PostgreSQL."""
    url = catalogue_url
    build_catalogue(url, kermany, tmp_path, n_real=4, n_synthetic=4, readers=["r1", "r2"])
    cache = tmp_path / "cache"
    engine = make_engine(url)
    yield SimpleNamespace(
        app=create_app(url, ServeConfig(cache_dir=cache)), url=url, cache=cache, db=session_factory(engine)
    )
    engine.dispose()


def answer_current(client, study_id: int, values: dict[str, str] = ANSWER):
    page = client.get(f"/studies/{study_id}")
    form = {"csrf_token": csrf_of(page.text), "token": TOKEN.search(page.text).group(1)}
    return page, client.post(f"/studies/{study_id}/answer", data=form | values)


def test_reader_works_through_a_study_without_feedback_and_resumes(site) -> None:
    study = make_study(site.url, site.cache, repeat_fraction=0.25)  # 8 items + 2 repeats
    reader = make_client(site.app, "r1")
    listing = reader.get("/studies").text
    assert "vtt" in listing and "0 of 10" in listing and "Start" in listing
    for k in range(1, 4):
        page, response = answer_current(reader, study)
        assert f"Item {k} of 10" in page.text
        assert response.status_code == 303 and response.headers["location"] == f"/studies/{study}"
    # A new browser (or the next day): the reader continues at item 4.
    again = make_client(site.app, "r1")
    assert "Item 4 of 10" in again.get(f"/studies/{study}").text
    # A double submit (a double click, the back button) stores nothing new.
    page = again.get(f"/studies/{study}")
    form = {"csrf_token": csrf_of(page.text), "token": TOKEN.search(page.text).group(1)} | ANSWER
    assert again.post(f"/studies/{study}/answer", data=form).status_code == 303
    resent = again.post(f"/studies/{study}/answer", data=form | {"choice": "real"})
    assert resent.status_code == 303 and resent.headers["location"] == f"/studies/{study}?kept=1"
    assert "your first answer is kept" in again.get(resent.headers["location"]).text
    with site.db() as session:
        assert session.scalar(select(func.count(Answer.id))) == 4
    seen = set()
    for _ in range(6):
        page, _ = answer_current(again, study, ANSWER | {"choice": "real"})
        # Whatever was answered before, every trial page is the same but for its token and number.
        seen.add(re.sub(r'(value|data-src)="[^"]*"|[Ii]tem \d+|/images/[^"]+', "", page.text))
    assert len(seen) == 1
    done = again.get(f"/studies/{study}").text
    assert "All 10 items are answered" in done
    assert not re.search(r"%|correct|accura|wrong|right", done, re.IGNORECASE)
    assert "10 of 10" in again.get("/studies").text


def test_incomplete_answers_are_refused_with_the_field(site) -> None:
    study = make_study(site.url, site.cache)
    reader = make_client(site.app, "r1")
    _, response = answer_current(reader, study, {"choice": "real", "confidence": "3"})
    assert response.status_code == 400 and "realism" in response.text
    _, response = answer_current(reader, study, ANSWER | {"choice": "both"})
    assert response.status_code == 400 and "choice" in response.text
    assert "Item 1 of" in reader.get(f"/studies/{study}").text


def test_admin_creates_a_study_through_the_form(site) -> None:
    admin = make_client(site.app, "admin")
    page = admin.get("/admin/studies/new")
    assert page.status_code == 200 and 'value="r1"' in page.text and "kermany-syn" in page.text
    # 224 px JPEGs beside 64 px PNGs: the form says so, and how the study will show them.
    assert "kermany (2D, 224 px, 8-bit)" in page.text and "kermany-syn (2D, 64 px, 8-bit)" in page.text
    assert "Native resolutions differ" in page.text and "every image is shown at 64 px" in page.text
    check = admin.get("/admin/studies/new/resolution?real_dataset=kermany&synthetic_dataset=kermany-syn")
    assert check.json()["warnings"][0].startswith("Native resolutions differ")
    assert admin.get("/admin/studies/new/resolution?real_dataset=kermany").json() == {"warnings": []}
    form = {
        "csrf_token": csrf_of(page.text),
        "name": "pilot",
        "real_dataset": "kermany",
        "synthetic_dataset": "kermany-syn",
        "n_real": "40",
        "n_synthetic": "2",
        "readers": ["r1", "r2"],
        "kind": "turing",
        "likert": "on",
        "repeat_fraction": "0.5",
        "image_size": "64",
        "seed": "7",
    }
    refused = admin.post("/admin/studies/new", data=form)
    assert (
        refused.status_code == 400
        and "asks for 40 samples" in refused.text
        and 'value="pilot"' in refused.text
    )
    invalid = admin.post("/admin/studies/new", data=form | {"n_real": "two"})
    assert invalid.status_code == 400 and "n_real" in invalid.text
    with site.db() as session:
        assert session.scalar(select(func.count(Study.id))) == 0
    created = admin.post("/admin/studies/new", data=form | {"n_real": "2"})
    assert created.status_code == 303
    detail = admin.get(created.headers["location"]).text
    assert "2 real and 2 synthetic items" in detail and "r1" in detail and "0 of 6" in detail
    assert "pilot" in admin.get("/admin").text
    reader = make_client(site.app, "r2")
    assert "Item 1 of 6" in reader.get(created.headers["location"].replace("/admin", "")).text


def test_statistics_page_and_csv_downloads(site) -> None:
    study = make_study(site.url, site.cache, repeat_fraction=0.0)
    for name, choices in (("r1", ["real", "synthetic"]), ("r2", ["synthetic", "synthetic"])):
        reader = make_client(site.app, name)
        for k in range(8):
            answer_current(reader, study, ANSWER | {"choice": choices[k % 2]})
    admin = make_client(site.app, "admin")
    with site.db() as session:
        expected = study_statistics(answers_for_stats(session, study))
    page = admin.get(f"/admin/studies/{study}/statistics").text
    pooled = expected["pooled"]["accuracy"]
    assert f"{pooled['value'] * 100:.1f}%" in page and f"{pooled['k']}/{pooled['n']}" in page
    assert "Cohen&#39;s kappa" in page and "r1" in page and "r2" in page
    download = admin.get(f"/admin/studies/{study}/statistics.csv")
    assert download.headers["content-type"].startswith("text/csv")
    assert "attachment" in download.headers["content-disposition"]
    assert download.text == statistics_csv(expected)
    answers = list(csv.DictReader(io.StringIO(admin.get(f"/admin/studies/{study}/answers.csv").text)))
    assert len(answers) == 16 and {a["truth"] for a in answers} == {"real", "synthetic"}


def test_review_gallery_approves_and_rejects(site) -> None:
    admin = make_client(site.app, "admin")
    gallery = admin.get("/admin/review")
    assert gallery.status_code == 200
    with site.db() as session:
        synthetic = session.scalars(select(Sample).where(Sample.seed.is_not(None)).order_by(Sample.id)).all()
    assert f"/admin/samples/{synthetic[0].id}/preview.png" in gallery.text
    assert gallery.text.count('<span class="tag">kermany-syn</span>') == len(synthetic)  # "all": named
    preview = admin.get(f"/admin/samples/{synthetic[0].id}/preview.png")
    assert preview.status_code == 200 and preview.content[:4] == b"\x89PNG"
    full = admin.get(f"/admin/samples/{synthetic[0].id}/image.png")
    assert Image.open(io.BytesIO(full.content)).size == (64, 64)  # the native resolution
    token = csrf_of(gallery.text)
    # Without script: a reject without a reason shows the gallery again with the error at the sample.
    missing = admin.post(f"/admin/review/{synthetic[0].id}", data={"csrf_token": token, "decision": "reject"})
    assert missing.status_code == 400 and "Review synthetic samples" in missing.text
    assert 'aria-invalid="true"' in missing.text and "say why the sample is rejected" in missing.text
    reject = {"csrf_token": token, "decision": "reject", "reason": "blurred lung fields"}
    rejected = admin.post(f"/admin/review/{synthetic[0].id}", data=reject)
    assert rejected.status_code == 303 and f"last={synthetic[0].id}" in rejected.headers["location"]
    assert "Undo" in admin.get(rejected.headers["location"]).text
    approve = {"csrf_token": token, "decision": "approve", "state": "pending", "page": "1"}
    back = admin.post(f"/admin/review/{synthetic[1].id}", data=approve)
    assert back.status_code == 303 and back.headers["location"].startswith("/admin/review?state=pending")
    with site.db() as session:
        states = {s.id: s.review_state for s in session.scalars(select(Sample))}
        requests = session.scalars(select(RegenerationRequest)).all()
    assert states[synthetic[0].id] == "rejected" and states[synthetic[1].id] == "approved"
    assert [(r.sample_id, r.status) for r in requests] == [(synthetic[0].id, "open")]
    listed = admin.get("/admin/review?state=rejected").text
    assert f"/admin/samples/{synthetic[0].id}/" in listed and "rejected: blurred lung fields" in listed
    assert f"/admin/samples/{synthetic[0].id}/" not in admin.get("/admin/review").text
    # Undo: the sample is pending again and its regeneration request gone.
    undone = admin.post(f"/admin/review/{synthetic[0].id}/undo", data={"csrf_token": token})
    assert undone.status_code == 303
    # The script's requests get JSON; a batch decides every selected sample, or none.
    batch = {"csrf_token": token, "decision": "approve", "sample_ids": [synthetic[2].id, synthetic[3].id]}
    decided = admin.post("/admin/review", data=batch, headers={"Accept": "application/json"})
    assert {s["state"] for s in decided.json()["samples"]} == {"approved"}
    refused = admin.post(
        "/admin/review", data=batch | {"decision": "reject"}, headers={"Accept": "application/json"}
    )
    assert refused.status_code == 400 and "say why" in refused.json()["error"]
    with site.db() as session:
        states = {s.id: s.review_state for s in session.scalars(select(Sample))}
        assert session.scalars(select(RegenerationRequest)).all() == []
    assert states[synthetic[0].id] == "pending"
    assert states[synthetic[2].id] == states[synthetic[3].id] == "approved"


def test_provenance_names_server_paths_and_shortens_checksums(site) -> None:
    with site.db() as session:
        sample = session.scalars(select(Sample).where(Sample.seed.is_not(None))).first()
        sample.provenance = sample.provenance | {"run_dir": "/srv/runs/xray-ldm", "unet_sha256": "ab" * 32}
        session.commit()
        root, sha256 = sample.dataset.root, sample.sha256
    page = make_client(site.app, "admin").get(f"/gallery/samples/{sample.id}").text
    assert "/srv/runs" not in page and root not in page
    assert "&#34;xray-ldm&#34;" in page and f"&#34;{'ab' * 6}&#34;" in page and "ab" * 32 not in page
    assert f'<code title="{sha256}">{sha256[:12]}</code>' in page


def test_3d_trials_scroll_through_slices(site, hippocampus: Path, tmp_path: Path) -> None:
    real, syn = add_volume_datasets(site.url, hippocampus, tmp_path, 2)
    study = make_study(
        site.url, site.cache, real_dataset=real, synthetic_dataset=syn, n_real=2, n_synthetic=2
    )
    reader = make_client(site.app, "r1")
    page = reader.get(f"/studies/{study}").text
    slices = int(re.search(r'data-slices="(\d+)"', page).group(1))
    token = TOKEN.search(page).group(1)
    assert slices > 1 and 'name="slice_consistency"' in page and 'id="slice"' in page
    assert reader.get(f"/images/{token}/{slices - 1}").status_code == 200
    assert reader.get(f"/images/{token}/{slices}").status_code == 404
    _, response = answer_current(reader, study, ANSWER)
    assert response.status_code == 400 and "slice_consistency" in response.text
    _, response = answer_current(reader, study, ANSWER | {"slice_consistency": "5"})
    assert response.status_code == 303


def test_users_and_serve_commands(site, tmp_path: Path) -> None:
    runner = CliRunner()
    db = ["--database", site.url]
    added = runner.invoke(
        cli, ["users", "add", "dr.who", "--role", "admin", "--password-stdin", *db], input="a secret phrase\n"
    )
    assert added.exit_code == 0, added.output
    with site.db() as session:
        user = session.scalar(select(User).where(User.username == "dr.who"))
        assert user.role == "admin" and user.password_hash.startswith("$argon2id$")
    listing = runner.invoke(cli, ["users", "list", *db])
    assert listing.exit_code == 0 and "dr.who" in listing.output and "r2" in listing.output
    short = runner.invoke(cli, ["users", "add", "x", "--password-stdin", *db], input="short\n")
    assert short.exit_code == 2 and "at least 10" in short.output
    again = runner.invoke(cli, ["users", "add", "dr.who", "--password-stdin", *db], input="a secret phrase\n")
    assert again.exit_code == 2 and "exists already" in again.output
    bad_name = runner.invoke(
        cli, ["users", "add", "<script>", "--password-stdin", *db], input="a secret phrase\n"
    )
    assert bad_name.exit_code == 2 and "username" in bad_name.output
    exposed = runner.invoke(cli, ["serve", "--host", "0.0.0.0", "--insecure-cookies", *db])
    assert exposed.exit_code == 2 and "loopback" in exposed.output
    empty = runner.invoke(cli, ["serve", "--database", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert empty.exit_code == 2 and "synthmed db upgrade" in empty.output
