from __future__ import annotations

from nscmonitor.schedule.gates import decide, evaluate_predictions

C = ("neuron", "astrocyte", "oligodendrocyte", "undifferentiated")


def ev(true: list[str], pred: list[str], hours: list[float]):
    return evaluate_predictions(true, pred, hours, C)


def test_metrics_by_class_and_time() -> None:
    r = ev(["neuron", "neuron", "astrocyte", "astrocyte"], ["neuron", "astrocyte", "astrocyte", "astrocyte"],
           [0, 48, 0, 48])
    assert r.accuracy == 0.75 and r.recall == {"neuron": 0.5, "astrocyte": 1.0}
    assert r.balanced_accuracy == 0.75 and r.accuracy_from_24h == 0.5
    assert r.by_time == {"0-12h": 1.0, "48-72h": 0.5}


def test_better_candidate_is_promoted_worse_rejected() -> None:
    truth = ["neuron"] * 4 + ["astrocyte"] * 4
    hours = [0, 30, 50, 80] * 2
    weak = ev(truth, ["neuron"] * 8, hours)
    strong = ev(truth, truth, hours)
    assert decide(strong, weak).promote
    d = decide(weak, strong)
    assert not d.promote and any("balanced accuracy" in r for r in d.reasons)


def test_collapsing_rare_class_is_rejected_even_if_balanced_accuracy_holds() -> None:
    truth = ["neuron"] * 10 + ["oligodendrocyte"] * 2 + ["astrocyte"] * 10
    hours = [48.0] * 22
    active = ev(truth, ["neuron"] * 8 + ["astrocyte"] * 2 + ["oligodendrocyte"] * 2 + ["astrocyte"] * 10, hours)
    cand = ev(truth, ["neuron"] * 10 + ["astrocyte"] * 2 + ["astrocyte"] * 10, hours)
    d = decide(cand, active)
    assert not d.promote and any("oligodendrocyte collapses" in r for r in d.reasons)


def test_first_model_must_beat_chance() -> None:
    truth = ["neuron", "astrocyte"] * 10
    assert not decide(ev(truth, ["neuron"] * 20, [50] * 20), None).promote
    assert decide(ev(truth, truth, [50] * 20), None).promote


def test_degenerate_active_model_does_not_block_a_better_candidate() -> None:
    truth = ["neuron"] * 5 + ["astrocyte"] * 5
    one_class = ev(truth, ["neuron"] * 10, [50] * 10)  # recall(neuron) = 1.0, balanced 0.5
    good = ev(truth, ["neuron"] * 4 + ["astrocyte"] + ["astrocyte"] * 4 + ["neuron"], [50] * 10)
    assert decide(good, one_class).promote
