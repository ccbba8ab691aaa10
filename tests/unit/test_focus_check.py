"""The focus measure and the check that judges a frame against its own field's scans."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nscmonitor.core.domain import QCMetrics
from nscmonitor.scoring.qc import focus_check, qc_metrics


def _cells(seed: int = 0, shape: tuple[int, int] = (256, 320)) -> np.ndarray:
    """Dark blobs with sharp edges on a noisy background: detail at a few pixels' scale."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 0.6, np.float32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for _ in range(60):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.1, 0.4)
    return img + rng.normal(0, 0.01, shape).astype(np.float32)


def _qc(sharpness: float, passed: bool = True, reason: str | None = None) -> QCMetrics:
    return QCMetrics(1.0, 0.0, False, "uint16", 0.0, 1.0, 0.0, 1.0, passed, reason, sharpness=sharpness)


def test_sharpness_falls_with_blur_and_ignores_gain_and_offset() -> None:
    img = _cells()
    sharp = qc_metrics(img).sharpness
    assert sharp > 0
    as_camera = (img * 3000 + 200).astype(np.uint16)  # another exposure and offset, quantised
    assert qc_metrics(as_camera).sharpness == pytest.approx(sharp, rel=0.05)
    blurred = [qc_metrics(ndimage.gaussian_filter(img, s)).sharpness for s in (1.0, 2.0, 4.0)]
    assert blurred[0] < 0.5 * sharp and blurred[1] < blurred[0] and blurred[2] < blurred[1], (sharp, blurred)


def test_a_blank_frame_has_no_sharpness_and_is_never_judged() -> None:
    qc = qc_metrics(np.zeros((64, 64), np.uint16))
    assert qc.sharpness == 0.0
    assert focus_check(qc, 5.0, [(4.0, 100.0)], 0.4) == qc


def test_judged_against_the_median_of_the_nearest_scans() -> None:
    near = [(1.0, 100.0), (2.0, 90.0), (4.0, 110.0), (5.0, 5.0), (50.0, 1.0), (60.0, 1.0)]
    ok = focus_check(_qc(60.0), 3.0, near, 0.4)  # the four nearest: 100, 90, 110, 5 -> median 95
    assert ok.passed and ok.focus_ratio == pytest.approx(60.0 / 95.0)
    bad = focus_check(_qc(30.0), 3.0, near, 0.4)
    assert not bad.passed and bad.reason.startswith("out of focus") and "4 nearest frames" in bad.reason
    assert bad.focus_ratio == pytest.approx(30.0 / 95.0)
    # the far scans are not the reference: with them the median would be 47.5 and 30 would pass
    assert focus_check(_qc(30.0), 3.0, near, 0.4, k=6).passed


def test_first_scan_switched_off_and_earlier_failures() -> None:
    first = focus_check(_qc(1.0), 0.0, [], 0.4)
    assert first.passed and first.focus_ratio is None
    off = focus_check(_qc(1.0), 1.0, [(0.0, 100.0)], 0.0)
    assert off.passed and off.focus_ratio == pytest.approx(0.01)
    saturated = focus_check(_qc(1.0, False, "saturated (9.0% of pixels at full scale)"), 1.0, [(0.0, 100.0)], 0.4)
    assert saturated.reason.startswith("saturated") and saturated.focus_ratio == pytest.approx(0.01)
    one = focus_check(_qc(1.0), 1.0, [(0.0, 100.0), (0.5, 0.0), (0.7, float("nan"))], 0.4)
    assert not one.passed and "1 nearest frame;" in one.reason  # unmeasured neighbours do not count


def test_a_field_whose_focus_changed_for_good_takes_it_as_its_own_after_a_few_scans() -> None:
    """A run of failures is kept among the neighbours on purpose: after a permanent change
    (another objective) the field stops failing instead of failing for the rest of the run."""
    history = [(float(t), 100.0) for t in range(5)]
    verdicts = []
    for t in range(5, 10):
        qc = focus_check(_qc(20.0), float(t), history, 0.4)
        verdicts.append(qc.passed)
        history.append((float(t), 20.0))
    assert verdicts == [False, False, False, True, True]  # three scans, then the majority of the four nearest


def test_status_warns_when_many_of_an_experiments_newest_frames_are_out_of_focus() -> None:
    from nscmonitor.ops.health import focus_warnings
    from nscmonitor.store.reads import Outcomes

    def outcomes(scored: int, failed: int, out_of_focus: int) -> dict:
        return {"E1": Outcomes(scored, failed, 0, None, "out of focus (...)", ("phase",), out_of_focus=out_of_focus)}

    assert focus_warnings(outcomes(90, 10, 10)) == [
        "experiment E1: 10 of its newest 100 scored images (10%) failed QC as out of focus against their fields' "
        "nearest scans and are left out of the readouts; check the instrument's focus (autofocus offset, plate "
        "seating, condensation on the lid)"]
    assert focus_warnings(outcomes(91, 9, 9)) == []  # under a tenth
    assert focus_warnings(outcomes(20, 4, 4)) == []  # too few to say
    assert focus_warnings(outcomes(80, 20, 9)) == []  # the other QC failures are not focus


def test_a_fields_first_scan_is_judged_once_its_next_scans_are_there() -> None:
    from nscmonitor.scoring.scorer import late_verdicts
    from nscmonitor.store.focus_series import Neighbour

    key = (1, 1, None, None)
    stored = {key: {10: Neighbour(10, 0.0, 20.0, judged=False, passed=True),      # defocused first scan
                    11: Neighbour(11, 1.0, 100.0, judged=True, passed=True),
                    12: Neighbour(12, 0.0, 5.0, judged=False, passed=False),      # saturated: keeps its reason
                    13: Neighbour(13, 2.0, 95.0, judged=False, passed=True)}}     # claimed again below
    here = {key: [(13, 2.0, 95.0), (14, 3.0, 105.0)]}
    got = {v.image_id: v for v in late_verdicts(stored, here, {13, 14}, 0.4)}
    assert set(got) == {10, 12}, "judged frames and frames claimed again are left alone"
    # 10 against the nearest four of 11 (100), 12 (5), 13 (95, counted once), 14 (105): median 97.5
    assert got[10].ratio == pytest.approx(20.0 / 97.5) and got[10].reason.startswith("out of focus")
    assert got[12].reason is None
    assert late_verdicts(stored, {}, set(), 0.0)[0].reason is None, "the check switched off fails nothing"


@pytest.mark.parametrize("reason, kind", [
    ("out of focus (fine detail 0.07 of this field's 4 nearest frames; fails below 0.4)", "out of focus"),
    ("saturated (9.0% of pixels at full scale)", "saturated"),
    ("blank frame (no signal)", "blank frame"),
    ("12 of 4096 pixels are NaN or infinite (not scored)", "NaN or infinite pixels"),
    ("something new", "something new"),
])
def test_qc_reasons_are_counted_by_kind(reason: str, kind: str) -> None:
    from nscmonitor.core.domain import qc_kind

    assert qc_kind(reason) == kind
