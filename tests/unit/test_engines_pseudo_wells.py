"""The mixed-precision search scores calibration tiles over pseudo-wells of the gate's well size:
per-tile noise must average as it does over a real held-out well, and a systematic shift must
survive, or the search judges a different statistic from the gate it prepares for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nscmonitor.engines.mixed_precision import pseudo_wells, typical_well_size
from nscmonitor.engines.validate import DEFAULT_TOLERANCE, compare


def _probs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(4, 0.7), size=n).astype(np.float32)


def _noisy(reference: np.ndarray, sd: float, seed: int, shift: float = 0.0) -> np.ndarray:
    """The reference with independent per-tile noise (and a shift of class 0), renormalised."""
    out = reference + np.random.default_rng(seed).normal(0, sd, reference.shape)
    out[:, 0] += shift
    out = np.clip(out, 1e-6, None)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def test_every_tile_gets_a_pseudo_well_of_one_top_class_and_about_the_size():
    ref = _probs(400, 0)
    wells = pseudo_wells(ref, 10)
    assert len(wells) == len(ref) and all(wells)
    top = ref.argmax(axis=1)
    by_well: dict[str, set[int]] = {}
    for w, k in zip(wells, top):
        by_well.setdefault(w, set()).add(int(k))
    assert all(len(classes) == 1 for classes in by_well.values())
    for k in range(4):
        sizes = [c for w, c in Counter(wells).items() if by_well[w] == {k}]
        assert max(sizes) - min(sizes) <= 1 and 5 <= min(sizes) and max(sizes) <= 15, sizes
    assert pseudo_wells(ref, 10) == wells  # the same tiles always make the same wells


def test_per_tile_noise_averages_as_over_real_wells_of_that_size():
    ref = _probs(400, 1)
    cand = _noisy(ref, 0.03, 2)
    real = tuple(f"w{i // 10}" for i in range(len(ref)))  # held-out wells of ten tiles
    sparse = tuple(f"w{i // 2}" for i in range(len(ref)))  # calibration wells of one or two tiles
    on_real = compare(ref, cand, real, backend="t").well_readout_pp
    on_sparse = compare(ref, cand, sparse, backend="t").well_readout_pp
    on_pseudo = compare(ref, cand, pseudo_wells(ref, typical_well_size(real)), backend="t").well_readout_pp
    assert on_sparse > 2 * on_real, (on_sparse, on_real)
    assert abs(on_pseudo - on_real) < 0.5 * on_real, (on_pseudo, on_real)


def test_a_systematic_shift_survives_the_averaging():
    ref = _probs(400, 3)
    cand = _noisy(ref, 0.0, 4, shift=0.03)
    assert compare(ref, cand, pseudo_wells(ref, 10), backend="t").well_readout_pp > 1.5


def test_typical_well_size_is_the_median_and_size_must_be_positive():
    assert typical_well_size(["a"] * 6 + ["b"] * 10 + ["c"] * 16) == 10
    assert typical_well_size(["a"]) == 1 and typical_well_size([]) == 1
    with pytest.raises(ValueError, match="at least 1"):
        pseudo_wells(_probs(8, 5), 0)


def test_the_ladder_tightens_when_the_search_keeps_nothing_and_stops_when_nothing_stays_int8():
    """Pseudo-wells can read better than the held-out wells: a search whose whole model passed
    at a generous margin (nothing kept fp32), after the plain file had failed its held-out gate,
    must hand over to a tighter margin rather than end the ladder; a search that kept every
    group fp32 ends it."""
    from nscmonitor.engines.mixed_precision import SearchResult, ladder_step

    def result(nodes, int8_groups=(), split=()):
        return SearchResult(groups=["g"] if nodes else [], nodes=list(nodes), passed=True, steps=1,
                            calib_readout_pp=0.5, calib_agreement_clear=1.0, int8_groups=list(int8_groups),
                            int8_split_nodes=list(split))

    assert ladder_step(result([])) == "tighten"
    assert ladder_step(result(["/b/Conv"])) == "stop"
    assert ladder_step(result(["/b/Conv"], int8_groups=["/a"])) == "build"
    assert ladder_step(result(["/b/Conv"], split=["/b/Conv_1"])) == "build"


def _gate(passed: bool, pp: float):
    from nscmonitor.engines.validate import GateReport

    return GateReport(backend="ort-int8", n_tiles=64, n_groups=8, top1_agreement=1.0 if passed else 0.9,
                      well_readout_pp=pp, max_abs_prob_diff=0.01, mean_abs_prob_diff=0.001,
                      tolerance=dict(DEFAULT_TOLERANCE), passed=passed,
                      reasons=() if passed else (f"well readout {pp} pp > 1 pp",))


def _search(groups):
    from nscmonitor.engines.mixed_precision import SearchResult

    return SearchResult(groups=list(groups), nodes=[f"{g}/Conv" for g in groups], passed=True, steps=3,
                        calib_readout_pp=0.4, calib_agreement_clear=1.0, int8_groups=["/other"])


def test_a_refused_retry_leaves_the_file_an_earlier_rung_published_with_its_own_report(tmp_path):
    """The ladder's refused retry: the mix of the first margin was published (one runtime
    passed it, not the one that serves), the tighter margin's mix was refused and deleted.
    What stays is the first mix's file, with its report and the groups it keeps fp32, not the
    refused mix's report, and the report beside the target is written again."""
    from nscmonitor.engines.mixed_precision import ladder_outcome

    first, second = _search(["/l1"]), _search(["/l1", "/l2"])
    published = tmp_path / "model.int8.onnx"
    plain = (None, _gate(False, 3.0))
    path, report, chosen, rewrite = ladder_outcome(plain, (None, _gate(False, 1.4)),
                                                   (published, _gate(True, 0.6), first), second)
    assert path == published and chosen is first and rewrite
    assert report.well_readout_pp == 0.6 and report.passed and report.kept_fp32 == ("/l1",)


def test_a_refused_retry_after_a_plain_file_one_runtime_passed_keeps_that_file():
    """The plain file passed ONNX Runtime but not OpenVINO (which would serve); every mix
    after it was refused: the plain file is still on disk and its report, with nothing kept
    fp32, goes back beside it."""
    from nscmonitor.engines.mixed_precision import ladder_outcome

    plain_path = Path("model.int8.onnx")
    plain = (plain_path, _gate(True, 0.8))
    path, report, chosen, rewrite = ladder_outcome(plain, (None, _gate(False, 2.0)), (plain_path, plain[1], None),
                                                   _search(["/l1"]))
    assert path == plain_path and chosen is None and rewrite
    assert report.well_readout_pp == 0.8 and report.kept_fp32 == ()


def test_the_ladder_outcome_of_a_passing_mix_nothing_built_and_everything_refused():
    from nscmonitor.engines.mixed_precision import ladder_outcome

    mix = _search(["/l1"])
    out = Path("model.int8.onnx")
    passed = _gate(True, 0.5)
    path, report, chosen, rewrite = ladder_outcome((None, _gate(False, 3.0)), (out, passed), (out, passed, mix), mix)
    assert (path, chosen, rewrite, report.kept_fp32) == (out, mix, True, ("/l1",))
    # no mix built (the search stopped at once): the plain outcome stands and its report is already there
    plain = (None, _gate(False, 3.0))
    assert ladder_outcome(plain, plain, None, None) == (None, plain[1], None, False)
    # every build refused, nothing on disk: the last refusal is reported, naming what its mix kept fp32
    path, report, chosen, rewrite = ladder_outcome(plain, (None, _gate(False, 1.2)), None, mix)
    assert path is None and chosen is mix and rewrite
    assert report.well_readout_pp == 1.2 and report.kept_fp32 == ("/l1",)


def test_most_sensitive_keeps_the_k_groups_whose_probes_read_worst_in_graph_order():
    from nscmonitor.engines.mixed_precision import SearchResult, most_sensitive

    nodes = {"/b1": ["c1", "c2"], "/b2": ["c3"], "/b3": ["c4", "c5"], "/b4": ["c6"]}
    greedy = SearchResult(["/b1", "/b2"], ["c1", "c2", "c3"], True, 9, 0.7, 1.0,
                          {"/b1": 0.3, "/b2": 2.5, "/b3": 0.9, "/b4": 0.1}, 4, ["/b3", "/b4"],
                          well_size=10, margin=0.8, group_nodes=nodes)
    one = most_sensitive(greedy, 1)
    assert one.groups == ["/b2"] and one.nodes == ["c3"] and one.int8_groups == ["/b1", "/b3", "/b4"]
    two = most_sensitive(greedy, 2)
    assert two.groups == ["/b2", "/b3"] and two.nodes == ["c3", "c4", "c5"]  # in graph order
    assert two.rule == "most sensitive 2" and not two.passed and two.calib_readout_pp is None
    assert two.to_dict()["calibration_readout_pp"] is None and two.to_dict()["rule"] == "most sensitive 2"
    assert "group_nodes" not in two.to_dict()
    assert most_sensitive(greedy, 4) is None and most_sensitive(greedy, 0) is None  # nothing would stay int8
    assert most_sensitive(SearchResult([], [], True, 1, 0.5, 1.0, {}, 4, []), 1) is None  # no probes ran
