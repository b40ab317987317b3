"""The dashboard's pages and routes with FastAPI's TestClient: the configurator follows the model and refuses
bad input in the form, uploads are size- and type-checked and stored under the job's folder, the live view's
event stream and previews, reports served from the job's folder only, galleries with overlaid masks and
provenance; admins only. No worker runs here: jobs stay queued unless a test moves them on."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from web_support import build_catalogue, csrf_of, fast_hasher, make_client

from synthmed.artifacts.run import RunDir
from synthmed.catalogue.db import make_engine, session_factory, transaction
from synthmed.catalogue.models import Dataset, Job, Sample
from synthmed.config import ServeConfig
from synthmed.jobs.files import job_dir, preview_path
from synthmed.web import auth
from synthmed.web.app import create_app
from synthmed.web.routers.dashboard import MAX_UPLOAD
from synthmed.web.routers.jobs import REPORT_CSP, job_events


@pytest.fixture(autouse=True)
def _fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "hasher", fast_hasher)


@pytest.fixture
def site(tmp_path: Path, kermany: Path, tiny_run: Path):
    """The app on a SQLite catalogue with a real and a synthetic set; the trained runs on offer are the tiny
    run and a copy of it that claims a mask ControlNet (its file is only looked for, never loaded here)."""
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    build_catalogue(url, kermany, tmp_path, n_real=4, n_synthetic=4, readers=["r1"])
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(tiny_run, runs / "tiny", symlinks=True)
    shutil.copytree(tiny_run, runs / "tiny-mask", symlinks=True)
    (runs / "tiny-mask" / "controlnet").mkdir(exist_ok=True)
    shutil.copy(tiny_run / "diffusion" / "model.pt", runs / "tiny-mask" / "controlnet" / "model.pt")
    RunDir(runs / "tiny-mask").write_metadata()  # as training a ControlNet records it in metadata.json
    config = ServeConfig(
        worker=False, runs_dir=runs, jobs_dir=tmp_path / "jobs", outputs_dir=tmp_path / "outputs"
    )
    engine = make_engine(url)
    yield SimpleNamespace(
        app=create_app(url, config), db=session_factory(engine), tmp=tmp_path, runs=runs, config=config
    )
    engine.dispose()


def model_key(client, name: str) -> str:
    page = client.get("/dashboard").text
    marker = f'title="{name}"' if "/" in name else f">{name}</td>"
    row = page[page.index(marker) :]
    return row[row.index("model=") + 6 : row.index('">Configure')]


def generation_form(client, name: str = "tiny", **values) -> tuple[str, dict]:
    key = model_key(client, name)
    page = client.get(f"/dashboard/configure?model={key}")
    assert page.status_code == 200
    form = {"csrf_token": csrf_of(page.text), "model": key, "label": "NORMAL", "count": "3", "steps": "5"}
    return page.text, form | values


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def add_job(site, **fields) -> int:
    with transaction(site.db) as session:
        job = Job(kind=fields.pop("kind", "generate"), **fields)
        session.add(job)
        session.flush()
        return job.id


def test_admins_only(site) -> None:
    job = add_job(site, state="running")
    paths = [
        "/dashboard",
        "/dashboard/evaluate",
        "/jobs",
        f"/jobs/{job}",
        f"/jobs/{job}/events",
        "/gallery/1",
    ]
    anonymous, reader = make_client(site.app), make_client(site.app, "r1")
    for path in [*paths, f"/jobs/{job}/previews/0.png", "/gallery/samples/1/thumb.png"]:
        response = anonymous.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/login", path
        assert reader.get(path).status_code == 403, path


def test_the_configurator_follows_the_model_and_enqueues_a_generation_job(site) -> None:
    admin = make_client(site.app, "admin")
    page, form = generation_form(admin)
    for offered in ('value="NORMAL"', 'value="PNEUMONIA"', 'value="ddim"', 'value="dpmsolver"'):
        assert offered in page
    assert 'name="condition_upload"' not in page  # no ControlNet: no structure input
    response = admin.post("/dashboard/generate", data=form | {"seed": "7", "guidance": "2.5"})
    assert response.status_code == 303
    job_id = int(response.headers["location"].rsplit("/", 1)[1])
    with site.db() as session:
        job = session.get(Job, job_id)
        assert job.state == "queued" and job.kind == "generate"
        assert job.config["out"] == str(site.config.outputs_dir / f"job-{job_id}")
        assert Path(job.config["run_dir"]) == (site.runs / "tiny").resolve()
        assert (job.config["label"], job.config["count"], job.config["seed"]) == ("NORMAL", 3, 7)
    listing = admin.get("/jobs").text
    assert f"/jobs/{job_id}" in listing and "queued" in listing
    job_page = admin.get(f"/jobs/{job_id}").text
    assert "waiting for a worker" in job_page
    # Settings by name, not server paths, and only those chosen (not every default of the command).
    settings = job_page[job_page.index('id="settings"') :]
    assert "<th>run dir</th><td>tiny</td>" in settings and f"<td>job-{job_id}</td>" in settings
    assert "<th>guidance</th><td>2.5</td>" in settings and "<th>precision</th>" not in settings
    assert str(site.tmp) not in job_page
    # Cancel: a queued job ends at once.
    assert admin.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf_of(job_page)}).status_code == 303
    with site.db() as session:
        assert session.get(Job, job_id).state == "cancelled"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"label": "FRACTURE"}, "unknown label &#39;FRACTURE&#39;"),
        ({"steps": "0"}, "field &#39;steps&#39;"),
        ({"count": "many"}, "field &#39;count&#39;"),
        ({"sampler": "rflow"}, "sampler: choose one of ddim, ddpm"),
        ({"condition": "mask"}, "upload a structure map or pick a mask"),
    ],
)
def test_invalid_settings_are_shown_in_the_form(site, values: dict, message: str) -> None:
    admin = make_client(site.app, "admin")
    _page, form = generation_form(admin)
    response = admin.post("/dashboard/generate", data=form | values)
    assert response.status_code == 400
    assert 'role="alert"' in response.text and message in response.text
    assert 'action="/dashboard/generate"' in response.text  # the form again, with what was typed
    field = next(iter(values))  # and the field is marked, with its own message, where the form has it
    marked = f'aria-invalid="true" aria-describedby="{field}-error"' in response.text
    assert marked == (f'name="{field}"' in response.text)
    with site.db() as session:
        assert session.scalar(select(Job.id)) is None


def test_unknown_models_and_missing_tokens_are_refused(site) -> None:
    admin = make_client(site.app, "admin")
    assert admin.get("/dashboard/configure?model=../../etc").status_code == 400
    _page, form = generation_form(admin)
    response = admin.post("/dashboard/generate", data=form | {"model": str(site.runs / "tiny")})
    assert response.status_code == 400 and "unknown model" in response.text
    assert admin.post("/dashboard/generate", data=form | {"csrf_token": "forged"}).status_code == 403


def test_uploaded_masks_are_checked_and_stored_under_the_job(site) -> None:
    admin = make_client(site.app, "admin")
    page, form = generation_form(admin, "tiny-mask", condition="mask")
    assert 'name="condition_upload"' in page and 'value="mask"' in page
    mask = np.zeros((100, 140), dtype=np.uint8)
    mask[30:60, 40:90] = 255

    def upload(data: bytes, name: str = "lesion.png"):
        return admin.post("/dashboard/generate", data=form, files={"condition_upload": (name, data)})

    refused = {
        b"%PDF-1.4 not an image": "not a readable PNG or JPEG",
        png_bytes(mask)[: len(png_bytes(mask)) // 2]: "not a readable PNG or JPEG",  # truncated
        png_bytes(np.tile(np.arange(140, dtype=np.uint8), (100, 1))): "structure map",  # not two-valued
        b"\x89PNG" + b"\0" * MAX_UPLOAD: "larger than 5 MiB",
    }
    for data, message in refused.items():
        response = upload(data)
        assert response.status_code == 400 and message in response.text, message
    assert upload(b"\0" * (2 * MAX_UPLOAD)).status_code == 413  # beyond the route's body limit
    response = upload(png_bytes(mask))
    assert response.status_code == 303
    job_id = int(response.headers["location"].rsplit("/", 1)[1])
    with site.db() as session:
        config = session.get(Job, job_id).config
    stored = Path(config["condition_file"])
    assert stored.parent == job_dir(site.config.jobs_dir, job_id) and config["condition"] == "mask"
    assert np.array_equal(np.asarray(Image.open(stored)), mask)
    assert not any((site.config.jobs_dir / ".uploads").iterdir())  # refused uploads left nothing behind
    # The plain model has no ControlNet: a structure map is refused with the reason.
    _page, plain = generation_form(admin, "tiny")
    response = admin.post(
        "/dashboard/generate", data=plain, files={"condition_upload": ("m.png", png_bytes(mask))}
    )
    assert response.status_code == 400 and "has no mask ControlNet" in response.text


def test_a_catalogue_mask_can_be_picked(site) -> None:
    with transaction(site.db) as session:
        sample = session.scalar(select(Sample).join(Dataset).where(Dataset.origin == "synthetic"))
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[20:40, 10:30] = 255
        Image.fromarray(mask).save(Path(sample.dataset.root) / "lesion_mask.png")
        sample.mask_path, sample_id = "lesion_mask.png", sample.id
    admin = make_client(site.app, "admin")
    page, form = generation_form(admin, "tiny-mask")
    assert f'value="{sample_id}"' in page
    response = admin.post("/dashboard/generate", data=form | {"mask_sample": str(sample_id)})
    assert response.status_code == 303
    with site.db() as session:
        stored = Path(session.scalars(select(Job)).one().config["condition_file"])
    assert np.array_equal(np.asarray(Image.open(stored)), mask)
    assert admin.post("/dashboard/generate", data=form | {"mask_sample": "999"}).status_code == 400


def test_the_event_stream_sends_progress_until_the_job_ends(site) -> None:
    job = add_job(site, state="running", progress={"phase": "sampling", "step": 1, "steps": 5, "previews": 0})

    async def follow() -> list[str]:
        async def connected() -> bool:
            return False

        events = job_events(site.db, job, connected, interval=0)
        seen = [await anext(events)]
        with transaction(site.db) as session:
            session.get(Job, job).progress = {"phase": "sampling", "step": 4, "steps": 5, "previews": 2}
        seen.append(await anext(events))
        with transaction(site.db) as session:
            session.get(Job, job).state = "done"
        seen += [event async for event in events]
        return seen

    seen = asyncio.run(follow())
    kinds = [e.split("\n")[0] for e in seen]
    assert kinds == ["event: progress"] * 3 + ["event: end"]
    data = [json.loads(e.split("data: ", 1)[1]) for e in seen[:3]]
    assert [d["progress"]["step"] for d in data] == [1, 4, 4]
    assert data[1]["progress"]["previews"] == 2 and data[2]["state"] == "done"
    # Over HTTP (the job has ended, so the stream ends too).
    response = make_client(site.app, "admin").get(f"/jobs/{job}/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("event: progress") and response.text.endswith("event: end\ndata: {}\n\n")
    assert make_client(site.app, "admin").get("/jobs/999/events").status_code == 404


def test_previews_are_served_for_their_own_job_only(site) -> None:
    first, second = add_job(site, state="running"), add_job(site, state="running")
    path = preview_path(site.config.jobs_dir, second, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(png_bytes(np.zeros((8, 8), dtype=np.uint8)))
    (site.config.jobs_dir / "secret.png").write_bytes(b"not for browsers")
    admin = make_client(site.app, "admin")
    response = admin.get(f"/jobs/{second}/previews/0.png")
    assert response.status_code == 200 and response.content == path.read_bytes()
    assert admin.get(f"/jobs/{first}/previews/0.png").status_code == 404
    for bad in ("..%2F..%2Fsecret", "-1", "1e3", "%2e%2e"):
        assert admin.get(f"/jobs/{second}/previews/{bad}.png").status_code in (400, 404), bad


def test_reports_are_served_from_the_job_folder_only_with_a_strict_policy(site) -> None:
    out = site.config.outputs_dir / "job-x"
    (out / "report_assets").mkdir(parents=True)
    (out / "report.html").write_text('<style>p{color:red}</style><img src="report_assets/a.png">')
    (out / "report_assets" / "a.png").write_bytes(png_bytes(np.zeros((4, 4), dtype=np.uint8)))
    (site.tmp / "outside.txt").write_text("secret")
    good = add_job(
        site,
        kind="evaluate",
        state="done",
        config={"out": str(out)},
        result={"report": str(out / "report.html")},
    )
    hostile = add_job(  # a report path outside the job's own output folder
        site,
        kind="evaluate",
        state="done",
        config={"out": str(out)},
        result={"report": str(site.tmp / "x.html")},
    )
    admin = make_client(site.app, "admin")
    assert admin.get(f"/jobs/{good}/report").headers["location"] == f"/jobs/{good}/report/"
    page = admin.get(f"/jobs/{good}/report/")
    assert page.status_code == 200 and "report_assets/a.png" in page.text
    assert page.headers["content-security-policy"] == REPORT_CSP
    assert admin.get(f"/jobs/{good}/report/report_assets/a.png").status_code == 200
    for bad in ("../outside.txt", "..%2F..%2Foutside.txt", "%2Fetc%2Fpasswd", "report_assets"):
        assert admin.get(f"/jobs/{good}/report/{bad}").status_code == 404, bad
    assert admin.get(f"/jobs/{hostile}/report/").status_code == 404
    assert 'href="/jobs/' + str(good) + '/report/"' in admin.get(f"/jobs/{good}").text


def test_gallery_filters_overlays_masks_and_links_provenance(site) -> None:
    with transaction(site.db) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.origin == "synthetic"))
        samples = session.scalars(select(Sample).where(Sample.dataset_id == dataset.id)).all()
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[16:48, 16:48] = 255
        Image.fromarray(mask).save(Path(dataset.root) / "lesion_mask.png")
        samples[0].mask_path = "lesion_mask.png"
        samples[1].review_state = "approved"
        dataset_id, masked, approved = dataset.id, samples[0], samples[1]
    admin = make_client(site.app, "admin")
    page = admin.get(f"/gallery/{dataset_id}").text
    assert page.count("/thumb.png") == 4 and "Send to review" in page
    only_normal = admin.get(f"/gallery/{dataset_id}?label=NORMAL").text
    assert only_normal.count("/thumb.png") == 2 and "PNEUMONIA/syn" not in only_normal
    approved_only = admin.get(f"/gallery/{dataset_id}?state=approved").text
    assert approved_only.count("/thumb.png") == 1 and approved.path in approved_only
    assert admin.get(f"/gallery/{dataset_id}?state=nonsense").status_code == 400
    tinted = np.asarray(Image.open(io.BytesIO(admin.get(f"/gallery/samples/{masked.id}/thumb.png").content)))
    plain = np.asarray(Image.open(io.BytesIO(admin.get(f"/gallery/samples/{approved.id}/thumb.png").content)))
    assert tinted.shape == plain.shape == (256, 256, 3)
    red = (tinted[..., 0] == 255) & (tinted[..., 1] == 40)  # the outline
    assert red[64:192, 64:192].any() and not red[:60].any()
    assert (plain[..., 0] == plain[..., 1]).all()  # no mask: grey
    provenance = admin.get(f"/gallery/samples/{masked.id}").text
    assert masked.sha256 in provenance and "unchanged since it was catalogued" in provenance
    assert "&#34;seed&#34;" in provenance  # the manifest row, escaped
    assert admin.get("/gallery/samples/99999").status_code == 404


def test_an_evaluation_job_is_enqueued_from_catalogue_sets(site, kermany: Path) -> None:
    admin = make_client(site.app, "admin")
    with transaction(site.db) as session:
        session.add(Dataset(name="kermany-test", origin="real", root=str(kermany / "test")))
    with site.db() as session:
        ids = {d.name: d.id for d in session.scalars(select(Dataset))}
    real, holdout, synthetic = ids["kermany"], ids["kermany-test"], ids["kermany-syn"]
    page = admin.get("/dashboard/evaluate").text
    # The holdout is never preselected: a form sent as it comes cannot evaluate against the training set.
    assert '<option value="">pick a set the model never saw</option>' in page
    form = {
        "csrf_token": csrf_of(page),
        "real": real,
        "holdout": holdout,
        "synthetic": synthetic,
    }
    assert admin.post("/dashboard/evaluate", data=form | {"synthetic": real}).status_code == 400
    same = admin.post("/dashboard/evaluate", data=form | {"holdout": real})
    assert same.status_code == 400 and "never saw, not its training set" in same.text
    assert 'aria-invalid="true"' in same.text
    response = admin.post("/dashboard/evaluate", data=form)
    assert response.status_code == 303
    with site.db() as session:
        job = session.scalars(select(Job)).one()
        real_root = session.get(Dataset, real).root
    assert job.kind == "evaluate" and job.config["real"] == real_root
    assert job.config["out"] == str(site.config.outputs_dir / f"job-{job.id}")
