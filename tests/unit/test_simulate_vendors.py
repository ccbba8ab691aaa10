"""Every name the simulator writes, for every vendor, parses to where and when it was taken."""

from __future__ import annotations

import pytest

from nscmonitor.simulate import VENDORS, Camera, Microscope

filenames = pytest.importorskip("nscmonitor.intake.filenames", reason="the file-name parser is not in the tree yet")

# Which key the name itself carries: vendors that encode elapsed time are checked on elapsed_h,
# the others on the 1-based scan index. Cytation's field/seq tokens are not asserted by the
# shared fixture table either (their meaning is unverified), so only the well is required there.
CARRIES = {
    "incucyte": ("field", "elapsed_h"),
    "imagexpress": ("field", "timepoint"),
    "harmony": ("field", "timepoint"),
    "cytation": (),
    "yokogawa": ("field", "timepoint"),
    "micromanager": ("field", "timepoint"),
}


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("profile", ["auto", "own"])
def test_every_written_name_parses_to_its_well_field_and_time(vendor, profile):
    scope = Microscope(vendor=vendor, plate_format=384, fields=3, hours=30, interval_h=10, seed=11,
                       wells=["A01", "B12", "P24", "H07"], camera=Camera(shape=(8, 8)))
    shots = list(scope.shots())
    assert len({scope.relpath(s) for s in shots}) == len(shots)  # no two images share a name
    for shot in shots:
        rel = scope.relpath(shot)
        res = filenames.parse_path(rel, vendor if profile == "own" else "auto")
        assert res.kind == "image", (rel, res.reason)
        assert res.key.well == shot.well, rel
        if "field" in CARRIES[vendor]:
            assert res.key.field == shot.field, rel
        if "timepoint" in CARRIES[vendor]:
            assert res.key.timepoint == shot.timepoint, rel
        if "elapsed_h" in CARRIES[vendor]:
            assert res.key.elapsed_h == pytest.approx(shot.elapsed_h, abs=1 / 60), rel
