"""Blinding: everything a reader's browser receives except the pixel values must not tell real from synthetic.

The study mixes real Kermany chest X-rays (224 px RGB JPEGs) with synthetic stand-ins that differ in every
way a careless server could leak: 64 px greyscale PNGs named syn_<seed>.png with a PNG text chunk, in
another folder, made later. Readers work through it with the TestClient, as a browser would; the test
records every URL, status, header, page, image byte length, PNG chunk and the position in the order, then
tries to predict the origin from them: feature by feature, and with a cross-validated classifier on all of
them. Both must do no better than chance; a positive control shows the same attack finds a real leak.

The pixels themselves must not give the origin away through resolution either: a study mixing 224 px real
images with 64 px synthetic ones is rendered at one common native resolution, so a classifier on image
sharpness alone is at chance, where the same classifier tells the origin from sharpness on the images
rendered without it.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binomtest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sqlalchemy import select
from web_support import build_catalogue, csrf_of, fast_hasher, make_client, make_study, png_chunks

from synthmed.catalogue.db import make_engine, session_factory
from synthmed.catalogue.models import Trial
from synthmed.config import ServeConfig
from synthmed.evaluation.sharpness import high_frequency_share, laplacian_energy
from synthmed.review.render import render_image
from synthmed.web import auth
from synthmed.web.app import create_app

READERS = ["r1", "r2", "r3"]
# A leak must be strong to be missed: a real one (a size, a header) predicts the origin almost perfectly;
# this many comparisons at this level fail by chance about once in a thousand runs.
ALPHA = 1e-3
TOKEN = re.compile(r'name="token" value="([^"]+)"')


@pytest.fixture(autouse=True)
def _fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "hasher", fast_hasher)


def header_features(prefix: str, response) -> dict[str, str]:
    features = {f"{prefix}.status": str(response.status_code)}
    for name, value in response.headers.multi_items():
        features[f"{prefix}.header.{name.lower()}"] = value
    features[f"{prefix}.header_names"] = ",".join(sorted(k.lower() for k in response.headers))
    return features


def token_features(token: str) -> dict[str, str]:
    return {
        "token.length": str(len(token)),
        "token.first": token[0],
        "token.last": token[-1],
        "token.digits": str(sum(c.isdigit() for c in token)),
        "token.upper": str(sum(c.isupper() for c in token)),
    }


def observe(client, reader: str, study_id: int, position: int) -> tuple[str, dict[str, str]]:
    """Show one trial, fetch its images, answer it; everything the browser got, as named string features."""
    page = client.get(f"/studies/{study_id}")
    html = page.text
    token = TOKEN.search(html).group(1)
    features = header_features("page", page)
    features |= token_features(token)
    features["position"] = str(position)
    features["page.length"] = str(len(page.content))
    # The page without what differs by construction (token, CSRF token, item number, reader name).
    normalised = re.sub(r'(value|data-src)="[^"]*"|[Ii]tem \d+|/images/[^"]+', "", html)
    features["page.normalised"] = normalised.replace(f"Log out {reader}", "Log out")
    features["page.image_urls"] = ",".join(u.replace(token, "T") for u in re.findall(r'/images/[^"]+', html))
    features["page.slices"] = re.search(r'data-slices="(\d+)"', html).group(1)
    image = client.get(f"/images/{token}/0")
    features |= header_features("image", image)
    chunks = png_chunks(image.content)
    features["image.bytes"] = str(len(image.content))
    features["image.chunks"] = ",".join(kind.decode() for kind, _ in chunks)
    features["image.chunk_lengths"] = ",".join(str(len(data)) for _, data in chunks)
    features["image.ihdr"] = chunks[0][1].hex()
    form = {"csrf_token": csrf_of(html), "token": token, "realism": "3", "anatomy": "3"}
    form |= {"choice": random.choice(["real", "synthetic"]), "confidence": "3"}
    answer = client.post(f"/studies/{study_id}/answer", data=form)
    features |= header_features("answer", answer)
    return token, features


@pytest.fixture(scope="module")
def observations(
    kermany: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[dict[str, str]], list[str]]:
    tmp = tmp_path_factory.mktemp("blinding")
    url = f"sqlite:///{tmp / 'catalogue.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth, "hasher", fast_hasher)
        build_catalogue(url, kermany, tmp, n_real=20, n_synthetic=20, readers=READERS)
        study = make_study(
            url,
            tmp / "cache",
            n_real=20,
            n_synthetic=20,
            readers=READERS,
            repeat_fraction=0.2,
            image_size=128,
        )
        app = create_app(url, ServeConfig(cache_dir=tmp / "cache"))
        tokens, rows = [], []
        for name in READERS:
            client = make_client(app, name)
            for position in range(48):
                token, features = observe(client, name, study, position)
                tokens.append(token)
                rows.append(features)
            assert "All 48 items are answered" in client.get(f"/studies/{study}").text
    engine = make_engine(url)
    with session_factory(engine)() as session:
        origin = {t.token: t.item.sample.origin for t in session.scalars(select(Trial))}
    engine.dispose()
    return rows, [origin[t] for t in tokens]


def test_served_images_and_pages_are_identical_but_for_their_pixels(observations) -> None:
    rows, truth = observations
    counts = Counter(truth)  # 20 + 20 first showings per reader, plus 8 repeats of either origin
    assert counts["real"] + counts["synthetic"] == 144 and min(counts.values()) >= 60
    for key in (
        "page.normalised",
        "page.image_urls",
        "page.slices",
        "image.bytes",
        "image.chunks",
        "image.chunk_lengths",
        "image.ihdr",
        "image.header_names",
        "image.header.content-length",
        "image.header.content-type",
        "page.header_names",
        "answer.header.location",
        "token.length",
    ):
        assert len({row[key] for row in rows}) == 1, key
    assert rows[0]["image.chunks"] == "IHDR,IDAT,IEND"
    assert "image.header.etag" not in rows[0] and "image.header.last-modified" not in rows[0]
    assert "image.header.set-cookie" not in rows[0]


def leave_one_out_lookup(values: list[str], origins: np.ndarray) -> np.ndarray:
    """Correct guesses of 'the majority origin among the other observations with this value' (ties and
    unseen values: real), the attack that catches any value tied to the origin; one count per row of
    origins (True: real), so permuted origins are scored in one pass."""
    _, group = np.unique(np.array(values, dtype=object).astype(str), return_inverse=True)
    one_hot = np.eye(group.max() + 1, dtype=np.float32)[group]
    real = (origins.astype(np.float32) @ one_hot)[:, group]  # real observations sharing each one's value
    synthetic = np.bincount(group)[group] - real
    guessed_right = np.where(origins, real - 1 >= synthetic, real < synthetic - 1)
    return guessed_right.sum(axis=1)


def lookup_p(values: list[str], truth: list[str], threshold: float) -> tuple[int, float]:
    """The lookup's correct guesses and their permutation p-value. Not a binomial test: observations
    sharing a value are scored together, so under the null the count varies about twice as much as a
    binomial one (a 64-valued random token character reaches 98/144 about once in a thousand runs, which
    a binomial test puts at 9e-6). Enough permutations that p can fall below the threshold."""
    origins = np.array(truth) == "real"
    observed = int(leave_one_out_lookup(values, origins[None])[0])
    if len(set(values)) == 1:  # every permutation scores alike
        return observed, 1.0
    permutations = math.ceil(2 / threshold)
    rng = np.random.default_rng(0)
    as_high = 0
    for start in range(0, permutations, 10_000):
        block = rng.permuted(np.tile(origins, (min(10_000, permutations - start), 1)), axis=1)
        as_high += int((leave_one_out_lookup(values, block) >= observed).sum())
    return observed, (1 + as_high) / (1 + permutations)


def chance_p(correct: int, n: int) -> float:
    return binomtest(correct, n, 0.5, alternative="greater").pvalue


def test_no_single_observation_predicts_the_origin(observations) -> None:
    rows, truth = observations
    keys = sorted(set().union(*rows))
    threshold = ALPHA / len(keys)
    for key in keys:
        correct, p = lookup_p([row.get(key, "") for row in rows], truth, threshold)
        assert p > threshold, f"{key} predicts the origin: {correct}/{len(rows)}, permutation p {p:.1e}"


def classifier_correct(rows: list[dict[str, str]], truth: list[str]) -> int:
    keys = sorted(set().union(*rows))
    table = np.array([[row.get(k, "") for k in keys] for row in rows], dtype=object)
    model = make_pipeline(
        OneHotEncoder(handle_unknown="ignore", min_frequency=2),
        RandomForestClassifier(n_estimators=100, random_state=0),
    )
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, table, np.array(truth), cv=folds)
    return int((predicted == np.array(truth)).sum())


def test_a_classifier_on_everything_but_the_pixels_is_at_chance(observations) -> None:
    rows, truth = observations
    correct = classifier_correct(rows, truth)
    assert chance_p(correct, len(rows)) > ALPHA, f"classifier: {correct}/{len(rows)} correct"


def test_the_attack_finds_a_leak_when_there_is_one(observations) -> None:
    """Positive control: the same attack, given one leaky feature (a source file's format), wins."""
    rows, truth = observations
    leaky = [
        row | {"leak": "jpeg" if origin == "real" else "png"} for row, origin in zip(rows, truth, strict=True)
    ]
    keys = sorted(set().union(*leaky))
    correct, p = lookup_p([r["leak"] for r in leaky], truth, ALPHA / len(keys))
    assert correct == len(rows) and p < ALPHA / len(keys)
    assert chance_p(classifier_correct(leaky, truth), len(rows)) < 1e-9


MISMATCH_N = 30  # real and synthetic items of the resolution-mismatch study
SHOWN = 128  # on screen: both origins enlarged, the 64 px ones twice as much as the 224 px ones at 64


def sharpness_features(planes: list[np.ndarray]) -> np.ndarray:
    """Per image: mean |Laplacian| and the share of spectral power above half Nyquist, what blur changes."""
    x = torch.tensor(np.stack(planes), dtype=torch.float32)[:, None] / 255
    return np.stack([laplacian_energy(x).numpy(), high_frequency_share(x)], axis=1)


def sharpness_classifier_correct(features: np.ndarray, truth: list[str]) -> int:
    model = make_pipeline(StandardScaler(), LogisticRegression())
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, features, np.array(truth), cv=folds)
    return int((predicted == np.array(truth)).sum())


@pytest.fixture(scope="module")
def mismatch(kermany: Path, tmp_path_factory: pytest.TempPathFactory):
    """224 px real chest X-rays and 64 px synthetic stand-ins, shown at 128 px: the images one reader was
    served, their origins, and their source files. The stand-ins are downsized by area averaging, as
    training images are, so a model trained at 64 px makes images of this sharpness."""
    tmp = tmp_path_factory.mktemp("mismatch")
    url = f"sqlite:///{tmp / 'catalogue.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth, "hasher", fast_hasher)
        n = MISMATCH_N
        build_catalogue(
            url, kermany, tmp, n_real=n, n_synthetic=n, readers=["r1"], resample=Image.Resampling.BOX
        )
        study = make_study(
            url, tmp / "cache", n_real=n, n_synthetic=n, readers=["r1"], repeat_fraction=0, image_size=SHOWN
        )
        client = make_client(create_app(url, ServeConfig(cache_dir=tmp / "cache")), "r1")
        served, tokens = [], []
        for _ in range(2 * n):
            html = client.get(f"/studies/{study}").text
            token = TOKEN.search(html).group(1)
            image = client.get(f"/images/{token}/0").content
            served.append(np.asarray(Image.open(io.BytesIO(image))))
            form = {"csrf_token": csrf_of(html), "token": token, "choice": "real", "confidence": "3"}
            client.post(f"/studies/{study}/answer", data=form | {"realism": "3", "anatomy": "3"})
            tokens.append(token)
        admin_page = make_client(create_app(url, ServeConfig(cache_dir=tmp / "cache")), "admin").get(
            f"/admin/studies/{study}"
        )
    engine = make_engine(url)
    with session_factory(engine)() as session:
        trials = {t.token: t.item.sample for t in session.scalars(select(Trial))}
        origins = [trials[t].origin for t in tokens]
        files = [Path(trials[t].dataset.root) / trials[t].path for t in tokens]
    engine.dispose()
    return served, origins, files, admin_page.text


def test_a_resolution_mismatch_is_rendered_away(mismatch) -> None:
    served, truth, _, admin_page = mismatch
    assert Counter(truth) == {"real": MISMATCH_N, "synthetic": MISMATCH_N}
    assert "native resolution of 64 px" in admin_page and "Native resolutions differ" in admin_page
    correct = sharpness_classifier_correct(sharpness_features(served), truth)
    assert chance_p(correct, len(truth)) > ALPHA, f"sharpness tells the origin: {correct}/{len(truth)}"


def test_sharpness_gives_the_origin_away_without_a_common_resolution(mismatch) -> None:
    """Positive control: the same images rendered straight to the screen size, each from its own native
    resolution (as before), are told apart by the same classifier."""
    _, truth, files, _ = mismatch
    planes = [render_image(path, SHOWN) for path in files]
    correct = sharpness_classifier_correct(sharpness_features(planes), truth)
    assert chance_p(correct, len(truth)) < 1e-6, f"{correct}/{len(truth)}"
