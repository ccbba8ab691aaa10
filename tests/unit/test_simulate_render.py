"""Rendering: determinism, bit depths, optics and artefacts that a QC stage must see."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nscmonitor.simulate import Artefacts, Camera, Microscope
from nscmonitor.simulate.microscope import tiff_bytes

SMALL = Camera(shape=(192, 256))


def _frame(seed=5, well="A01", t_index=0, **kw):
    scope = Microscope(fields=1, hours=120, interval_h=24, seed=seed, wells=[well], camera=kw.pop("camera", SMALL), **kw)
    shots = list(scope.shots())
    return scope.render(shots[t_index])


def test_same_seed_same_bytes_different_seed_different_image():
    a, b, c = _frame(seed=5), _frame(seed=5), _frame(seed=6)
    assert tiff_bytes(a.image, 1.24) == tiff_bytes(b.image, 1.24)
    assert a.truth == b.truth
    assert not np.array_equal(a.image, c.image)


def test_bit_depths_and_background_level():
    eight = _frame()
    twelve = _frame(camera=Camera(shape=(192, 256), bit_depth=12))
    assert eight.image.dtype == np.uint8 and twelve.image.dtype == np.uint16
    assert twelve.image.max() <= 4095 and twelve.image.max() > 255
    # Background sits at 55-70 % of full scale (plus dark offset and drift).
    assert 0.45 < np.median(eight.image) / 255 < 0.8
    assert 0.45 < np.median(twelve.image) / 4095 < 0.8


def test_cells_are_visible_and_grow_in_number():
    clean = dict(artefacts=Artefacts.none())
    early = _frame(well="A09", t_index=0, **clean)  # control wells keep dividing
    late = _frame(well="A09", t_index=5, **clean)
    assert early.truth["n_cells"] > 5
    assert late.truth["n_cells"] > 1.5 * early.truth["n_cells"]
    assert early.image.std() > 2.0  # cells give contrast on a flat background


def test_neurons_commit_and_the_manifest_says_so():
    # A 384 x 512 frame (~100 cells): with plate-to-plate efficiency and well noise, the ~20
    # cells of a 192 x 256 frame no longer say which fate dominates.
    big = Camera(shape=(384, 512))
    f0, f5 = _frame(well="A01", t_index=0, camera=big), _frame(well="A01", t_index=5, camera=big)
    assert f0.truth["condition"] == "neuron-directed" and f0.truth["well_label"] == "neuron"
    assert f0.truth["mean_commitment"] < 0.1 < 0.5 < f5.truth["mean_commitment"]
    assert f5.truth["n_neuron"] > f5.truth["n_astrocyte"]


def test_defocus_lowers_laplacian_variance():
    cam = Camera(shape=(192, 256), bit_depth=12)
    scope = Microscope(fields=1, hours=48, interval_h=48, seed=2, wells=["A07"], camera=cam,
                       artefacts=Artefacts(focus=False))
    shot = list(scope.shots())[1]
    sharp = scope.render(shot).image.astype(float)
    from dataclasses import replace

    from nscmonitor.simulate.artefacts import image_artefacts
    from nscmonitor.simulate.render import render

    art = image_artefacts(scope.artefacts, seed=2, plate=0, well="A07", field=1, timepoint=2, hours=48,
                          field_edge_um=1e4)
    blurred, _ = render(scope.cells("A07", 1), 48, cam=cam, po=scope._optics, art=replace(art, defocus_um=12.0),
                        key=(2, 0, "A07", 1, 2))
    def laplacian_var(im: np.ndarray) -> float:  # sharpness as a QC would measure it (LoG variance)
        return ndimage.gaussian_laplace(im.astype(float), 2.0).var()

    assert laplacian_var(blurred) < 0.5 * laplacian_var(sharp)


def test_bright_field_is_nearly_invisible_in_focus():
    def contrast(defocus):
        cam = Camera(shape=(192, 256), bit_depth=12, modality="brightfield", bf_defocus_um=defocus)
        scope = Microscope(fields=1, hours=0, seed=4, wells=["A03"], camera=cam, artefacts=Artefacts.none())
        return next(scope.frames()).image.astype(float).std()

    assert contrast(0.0) < 0.3 * contrast(4.0)
