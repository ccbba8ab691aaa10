"""The well forecast's own out-of-distribution score (``scoring.forecast_ood``) on the frame
features the forecast reads: fitted on several plates of cell images, it leaves a new plate
of the same kind mostly unflagged and flags blank fields, textures and inverted frames; the
record in the model metadata gives back the same scores, and a damaged record is refused."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import cells_image, stable_seed
from nscmonitor.scoring import forecast_ood as FO
from nscmonitor.scoring import well_sequence as WS
from nscmonitor.simulate import out_of_domain as OD

TILE = 32


def _plate(name: str, n: int = 24, gain: float = 1.0) -> np.ndarray:
    """Frame features of ``n`` cell frames of one plate (its own gain and background)."""
    frames = [np.clip(cells_image(stable_seed(name, i)).astype(np.float64) * gain, 0, 4095).astype(np.uint16)
              for i in range(n)]
    return np.array([WS.frame_features(f, TILE) for f in frames])


@pytest.fixture(scope="module")
def fitted() -> tuple[FO.FrameOOD, dict, np.ndarray]:
    plates = {f"p{k}": _plate(f"p{k}", gain=g) for k, g in enumerate((0.8, 1.0, 1.2, 0.9))}
    x = np.concatenate(list(plates.values()))
    names = [p for p, v in plates.items() for _ in v]
    ood, info = FO.fit(x, names)
    return ood, info, x


def test_a_new_plate_of_the_same_kind_is_mostly_left_alone_and_other_kinds_are_flagged(fitted) -> None:
    ood, info, _ = fitted
    assert info["threshold_from"] == "leave-one-plate-out" and info["n_plates"] == 4
    assert info["flagged_held_out_plates"] == pytest.approx(1 - FO.QUANTILE, abs=0.02)
    new = _plate("new plate", n=40, gain=1.1)
    assert ood.flags(new).mean() <= 0.1
    cells = [cells_image(stable_seed("inv", i), (96, 128)) for i in range(20)]
    kinds = {"blank": OD.blanks(20, 128, seed=1), "texture": OD.textures(20, 128, seed=1),
             "inverted": OD.inverted(cells)}
    for kind, images in kinds.items():
        feats = np.array([WS.frame_features(im, TILE) for im in images])
        assert ood.flags(feats).mean() >= 0.95, kind


def test_the_record_gives_back_the_same_scores_and_a_damaged_one_is_refused(fitted) -> None:
    ood, info, x = fitted
    rec = ood.record(**info)
    back = FO.FrameOOD.from_record(rec, x.shape[1])
    np.testing.assert_allclose(back.scores(x), ood.scores(x))
    assert back.threshold == rec["threshold"] == info["threshold"]
    assert FO.FrameOOD.from_record(None, x.shape[1]) is None and FO.FrameOOD.from_record({}, x.shape[1]) is None
    with pytest.raises(ValueError, match="not for 5 features"):
        FO.FrameOOD.from_record(rec, 5)
    with pytest.raises(ValueError, match="method"):
        FO.FrameOOD.from_record(rec | {"method": "energy"}, x.shape[1])
    with pytest.raises(ValueError, match="not finite"):
        FO.FrameOOD.from_record(rec | {"threshold": float("nan")}, x.shape[1])
    with pytest.raises(ValueError, match="unreadable"):
        FO.FrameOOD.from_record({k: v for k, v in rec.items() if k != "precision"}, x.shape[1])


def test_a_frame_whose_features_are_not_finite_is_flagged(fitted) -> None:
    ood, _, x = fitted
    bad = x[:2].copy()
    bad[0, 3] = np.nan
    assert ood.flags(bad).tolist()[0] is True


def test_one_plate_gives_an_in_sample_threshold_and_says_so() -> None:
    x = _plate("only", n=30)
    ood, info = FO.fit(x, ["only"] * len(x))
    assert info["threshold_from"] == "in-sample (one plate)"
    assert ood.flags(x).mean() == pytest.approx(1 - FO.QUANTILE, abs=0.04)
    with pytest.raises(ValueError, match="at least two"):
        FO.fit(x[:1], ["only"])


def test_a_feature_that_never_varied_is_left_out_and_one_feature_alone_is_bounded(fitted) -> None:
    _, _, x = fitted
    never = x.copy()
    never[:, -1] = 0.0  # a blob count that was 0 in every fitted image
    ood = FO.fit_gaussian(never)
    assert not ood.precision[-1].any() and not ood.precision[:, -1].any()
    seen = never[:5].copy()
    seen[:, -1] = 3.0
    np.testing.assert_allclose(ood.scores(seen), ood.scores(never[:5]))
    wild, far = x[:5].copy(), x[:5].copy()
    wild[:, 0], far[:, 0] = 1e6, 1e3  # both beyond the clip: one feature cannot count for more than Z_CLIP
    fitted_ood = FO.fit_gaussian(x)
    np.testing.assert_allclose(fitted_ood.scores(wild), fitted_ood.scores(far))
    assert (fitted_ood.scores(far) > fitted_ood.scores(x[:5])).all()


def test_images_whose_features_are_not_finite_are_left_out_of_the_fit_and_too_few_leave_no_score() -> None:
    from nscmonitor.training.data import TileRecord
    from nscmonitor.training.forecast_train import fit_frame_ood

    x = _plate("some", n=12)
    x[3, 0] = np.nan
    ood, info = FO.fit(x, ["a"] * 6 + ["b"] * 6)
    assert info["n_images"] == 11 and info["n_left_out"] == 1 and np.isfinite(ood.threshold)
    recs = [TileRecord(path=f"{i}.tif", label="neuron", experiment="E", plate="P1", well=f"A{i}", split="train")
            for i in range(2)]
    feats = np.full((2, x.shape[1]), np.nan)
    none, why = fit_frame_ood(recs, feats)
    assert none is None and "at least two" in why["unavailable"]


def _simulated_tiles(tmp_path, modality: str, plates: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Measured vectors of the simulator's 64 px tiles (0, 24 and 72 h) and their plates."""
    from nscmonitor.simulate.labelled_tiles import export_tiles
    from nscmonitor.training.data import read_image

    out = tmp_path / f"{modality}-{seed}"
    export_tiles(out, plates=plates, hours=(0, 24, 72), tile_size=64, wells_per_condition=1, grid=(2, 2),
                 seed=seed, modality=modality)
    paths = sorted((out / "tiles").rglob("*.tif"))
    return np.array([WS.tile_vector(read_image(p)) for p in paths]), [p.parent.parent.name for p in paths]


def test_bright_field_is_flagged_by_the_optics_features_the_forecast_does_not_read(tmp_path) -> None:
    """Fitted on six phase-contrast plates of the simulator (small tiles, few images: on the
    demo's forecast export the share is 100 %, docs/training.md), the score flags far more
    bright-field tiles of the same cultures with the optics features than the forecast's own
    27 features do; a new phase-contrast plate stays mostly unflagged."""
    x, plates = _simulated_tiles(tmp_path, "phase", 6, seed=1)
    bright, _ = _simulated_tiles(tmp_path, "brightfield", 2, seed=2)
    new, _ = _simulated_tiles(tmp_path, "phase", 1, seed=3)
    assert x.shape[1] == WS.STORED_FEATURES
    full, _ = FO.fit(x, plates)
    model_only, _ = FO.fit(WS.model_part(x), plates)
    assert full.flags(bright).mean() >= 0.8
    assert full.flags(bright).mean() >= model_only.flags(WS.model_part(bright)).mean() + 0.2
    assert full.flags(new).mean() <= 0.15


def test_rows_of_the_first_features_only_are_scored_by_the_marginal(fitted) -> None:
    """A stored row from before the optics features (the first 27): its score is the fitted
    Gaussian's marginal over those, which is what a fit on those columns alone gives (the
    ridge sits on the diagonal), and never above the full row's score."""
    ood, _, x = fitted
    d = WS.MODEL_FEATURES
    alone = FO.fit_gaussian(x[:, :d])
    np.testing.assert_allclose(ood.scores(x[:, :d]), alone.scores(x[:, :d]), rtol=1e-6)
    assert (ood.scores(x[:, :d]) <= ood.scores(x) + 1e-9).all()
    back = FO.FrameOOD.from_record(ood.record(), (d, x.shape[1]))
    np.testing.assert_allclose(back.scores(x), ood.scores(x))
    with pytest.raises(ValueError, match="features for a score fitted on"):
        ood.scores(np.hstack([x, x[:, :1]]))
