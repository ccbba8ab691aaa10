"""Accuracy-aware mixed precision: which layers an int8 model keeps in fp32 so it passes its gate.

Why: the int8 recipe (``engines.quantize``) gets the demo's resnet18 over the gate, but on the
ResNet50s trained here a few blocks move the well readout by several points once rounded to
int8. Keeping *every* layer fp32 gives up the speed; keeping the few that matter keeps most of
it. The search measures that on the **calibration** tiles, never on the held-out tiles the gate
uses, so the gate stays an honest held-out check of what the search chose.

How (one quantisation, many cheap evaluations):
1. the whole recipe is quantised once (Q/DQ on every Conv/Gemm/Add input);
2. "group g in fp32" is made by graph surgery on that Q/DQ model: g's nodes get their fp32
   inputs back (activations before the Q/DQ pair, the fp32 weights), which is what excluding
   them from quantisation does, without re-running calibration;
3. each variant runs on ONNX Runtime with graph optimisations off, so Q/DQ execute as written
   (fake quantisation in float: the rounding int8 kernels do, at fp32 speed); the searches of
   one build share that preparation and their probes (``Probes``, ``engines.search_probes``:
   a variant is run once, and from where it leaves the fp32 model when an earlier probe
   left it there too, with the same probabilities to the bit);
4. sensitivity of a group = the calibration readout error when only that group is int8 (on
   the ResNet50s trained here the error is spread over many blocks: keeping one block fp32
   out of an all-int8 model moved the readout by less than its noise, while one block alone in
   int8 ranged from 0.6 to 7.6 pp, a clear order); then, least sensitive first, each group
   goes int8 if the model still passes the gate's criteria on the calibration tiles with a
   margin, else it stays fp32. Every group kept fp32 was tried and failed; the step cap
   (evaluations) bounds the time, groups not reached stay fp32.
Scored on what the gate scores (``engines.validate``: the readout part a well's tiles share,
and the tile noise) over wells like the gate's, held-out wells of about ten tiles each, while
the calibration set holds one to four tiles per well (128 tiles over 75 wells for the ResNet50
of docs/training.md). Wells of single tiles give a different statistic: on that model the
whole network in int8 read 12.3 pp over the calibration wells against 4.2 pp over pseudo-wells
of ten tiles (the gate's statistic of the time, the largest well difference). So variants are
scored over *pseudo-wells* (``pseudo_wells``): calibration tiles the fp32 model gives the same
top class, in chunks of the held-out wells' typical size, which averages per-tile noise as a
real well does and keeps a shift that depends on the class. Over 14 pseudo-wells against the
gate's 50 wells the old statistic was optimistic (the split's bounds widen with fewer wells
instead): the mix it chose at 80 % of the tolerance failed the held-out gate, hence
``build_int8``'s retries at tighter margins (docs/performance.md).
The search's Q/DQ model is not bias-corrected: a correction measured with everything int8
over-corrects a layer whose upstream a variant keeps fp32 (measured on a ResNet50: one block
alone in int8 read 10.4 pp with the all-int8 correction against 6.3 pp for the whole model),
and correcting every variant anew would multiply the search's time; the real build of the
chosen mix is corrected exactly (``engines.bias_correction``).
``build_int8`` uses the probes twice: its first rungs keep only the one, two, three groups
most sensitive on their own fp32 (``most_sensitive``), since near the gate the greedy mixes
read no closer than the whole model while one sensitive block kept fp32 can pass; then the
greedy mix above.
Groups are residual blocks where the exporter's node names say so (the scope down to the first
indexed module, ``/net/layer1/layer1.0/...``), else single layers (``group_of``). The result
(node names) feeds ``quantize_static``'s ``nodes_to_exclude`` for the real build, which is
gated as usual.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nscmonitor.engines.search_probes import BATCH, ProbeRunner, as_probs
from nscmonitor.engines.validate import DEFAULT_TOLERANCE, compare

if TYPE_CHECKING:
    from nscmonitor.engines.quantize import Rounds

log = logging.getLogger(__name__)

#: the calibration tiles must pass with this share of the readout tolerance (the held-out
#: gate sees other tiles; a variant that only just passes here tends to fail there)
READOUT_MARGIN = 0.8
#: margins tried in turn when the held-out gate refuses the mix a wider one chose: the search's
#: fake-quantised, uncorrected score on 128 tiles predicts the bias-corrected held-out readout
#: only roughly (a mix scored 0.8 pp here read 1.24-2.27 pp on the held-out wells)
SEARCH_MARGINS = (READOUT_MARGIN, 0.4, 0.2)
#: evaluations at most: a ResNet50 (16 blocks) needs 33 for the block pass, the rest go to
#: single layers of refused blocks (about 10 s each for 96 px tiles on a quiet 2-core machine)
MAX_STEPS = 60
#: the ladder's first rungs keep only the 1, 2, ... this many groups most sensitive on their own
#: fp32: on a ResNet50 whose whole int8 file just missed the gate (1.05-1.15 pp), the greedy
#: mixes read no closer (1.04-1.60 pp) until 11 of 16 blocks stayed fp32 (1.5x fp32), while
#: layer1.0 alone kept fp32 passed OpenVINO at 0.92 pp and ran 2.9x (docs/performance.md)
MOST_SENSITIVE = 3
QUANTISED_OPS = ("Conv", "Gemm", "MatMul", "Add")

Progress = Callable[[int, int, str], None]


@dataclass
class SearchResult:
    """What the search kept in fp32 and why; ``passed`` says whether the calibration tiles
    met the criteria (always, as built: groups that could not go int8 stay fp32)."""

    groups: list[str]
    nodes: list[str]
    passed: bool
    steps: int
    calib_readout_pp: float | None
    calib_agreement_clear: float | None
    sensitivity: dict[str, float] = field(default_factory=dict)
    n_groups: int = 0
    int8_groups: list[str] = field(default_factory=list)
    #: single layers of groups refused as a whole that the finer pass put in int8
    int8_split_nodes: list[str] = field(default_factory=list)
    #: tiles per pseudo-well the variants were scored over (None: the calibration wells)
    well_size: int | None = None
    #: the share of the readout tolerance variants were allowed on the calibration tiles
    margin: float = READOUT_MARGIN
    #: how the fp32 groups were chosen: "greedy" (the search above) or "most sensitive K"
    rule: str = "greedy"
    #: each group's nodes (what ``most_sensitive`` builds from; not recorded in the file)
    group_nodes: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        readout = None if self.calib_readout_pp is None else round(self.calib_readout_pp, 3)
        return {"rule": self.rule, "kept_fp32_groups": self.groups, "kept_fp32_nodes": self.nodes,
                "passed_on_calibration": self.passed, "steps": self.steps, "calibration_readout_pp": readout,
                "calibration_agreement_clear": self.calib_agreement_clear, "n_groups": self.n_groups, "int8_groups": self.int8_groups,
                "int8_split_nodes": self.int8_split_nodes, "pseudo_well_size": self.well_size,
                "readout_margin": self.margin,
                "sensitivity_pp": {k: round(v, 3) for k, v in self.sensitivity.items()}}


_INDEXED = re.compile(r"^[A-Za-z_]\w*\.\d+$")


def group_of(node_name: str) -> str:
    """A block's scope from exporter names: the scope down to the first indexed module
    (``name.N``, a child of a Sequential), so ``/layer2/layer2.1/conv1/Conv`` and, under the
    exported wrapper that adds the OOD score, ``/net/layer2/layer2.1/downsample/downsample.0/Conv``
    fall in their residual block (``/layer2/layer2.1``, ``/net/layer2/layer2.1``), and a plain
    conv stack's ``/net/features/features.3/Conv`` is its own group. A node outside such a
    scope (the stem, the head) is its own group. (Taking the first two scopes, as before the
    wrapper existed, made ``/net/layer2`` a whole stage and ``/net/features`` a whole network.)"""
    parts = node_name.strip("/").split("/")
    if node_name.startswith("/"):
        for i, part in enumerate(parts[:-1]):
            if _INDEXED.match(part):
                return "/" + "/".join(parts[:i + 1])
    return node_name


def quantised_nodes(qdq: Any) -> list[str]:
    """Nodes of the quantisable op types with at least one input fed by a DequantizeLinear."""
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in qdq.graph.node
            if n.op_type in QUANTISED_OPS and any(i in dq_out for i in n.input)]


def groups_of(qdq: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in quantised_nodes(qdq):
        out.setdefault(group_of(name), []).append(name)
    return out


def restore_fp32(qdq: Any, fp32: Any, nodes: set[str] | list[str]) -> Any:
    """A copy of the Q/DQ model whose ``nodes`` take their fp32 inputs again (same node names
    in both graphs: the Q/DQ model was quantised from ``fp32``); Q/DQ nodes left without a
    consumer are dropped."""
    import onnx

    nodes = set(nodes)
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    src = {n.name: n for n in fp32.graph.node if n.name in nodes}
    fp_inits = {i.name: i for i in fp32.graph.initializer}
    have = {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        if n.name in src:
            del n.input[:]
            n.input.extend(src[n.name].input)
            for name in src[n.name].input:
                if name in fp_inits and name not in have:
                    model.graph.initializer.append(fp_inits[name])
                    have.add(name)
    _unround_outputs(model, nodes)
    _prune(model)
    return model


def _unround_outputs(model: Any, restored: set[str]) -> None:
    """The quantiser also rounds a quantised node's output where a non-quantised op (a ReLU)
    reads it; a node kept fp32 has no such rounding, so those readers get the raw output
    back. Readers that are still quantised keep their Q/DQ pair. Where the node's ReLU was
    folded into that rounding (``unfold_relus`` put it back), the rounding sits after the ReLU,
    and is undone there."""
    still_int8 = set(quantised_nodes(model)) - restored
    outputs = {o for n in model.graph.node if n.name in restored for o in n.output}
    outputs |= {n.output[0] for n in model.graph.node if n.op_type == "Relu" and n.input[0] in outputs}
    q_of = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in outputs}
    raw = {n.output[0]: q_of[n.input[0]] for n in model.graph.node
           if n.op_type == "DequantizeLinear" and n.input[0] in q_of}
    for n in model.graph.node:
        if n.name in still_int8 or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(n.input):
            if name in raw:
                n.input[i] = raw[name]


def _prune(model: Any) -> None:
    """Drop nodes and initializers nothing reads any more."""
    graph_out = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_out
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def fake_quant_probs(model: Any, x: np.ndarray, *, threads: int = 0, batch_size: int = BATCH) -> np.ndarray:
    """Class probabilities of an ONNX model run with ONNX Runtime's graph optimisations off
    (Q/DQ execute as written, in float), for the first output. Softmax is applied when the
    output is not already a probability vector."""
    from nscmonitor.engines.bias_correction import literal_session

    sess = literal_session(model, threads=threads)
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return as_probs(np.concatenate([sess.run([out], {name: x[i:i + batch_size]})[0]
                                    for i in range(0, len(x), batch_size)]))


@dataclass
class _Score:
    readout_pp: float
    agreement_clear: float | None
    agreement: float
    mean_abs: float
    noise_ratio: float

    def passes(self, tol: dict[str, float], margin: float = READOUT_MARGIN) -> bool:
        agree = self.agreement_clear if self.agreement_clear is not None else self.agreement
        return (agree >= tol["top1_agreement"] and self.readout_pp <= margin * tol["well_readout_pp"]
                and self.noise_ratio <= tol["tile_noise_ratio"])


def _score(reference: np.ndarray, probs: np.ndarray, groups: tuple[str, ...], tol: dict[str, float]) -> _Score:
    """Scored on the gate's own figures: the readout part a pseudo-well's tiles share, the tile noise."""
    r = compare(reference, probs, groups, backend="search", tolerance=tol)
    return _Score(r.readout_gated_pp, r.top1_agreement_clear, r.top1_agreement, r.mean_abs_prob_diff,
                  r.tile_noise_ratio or 0.0)


def _fp32_and_qdq(fp32_path: str | Path, calib_x: np.ndarray, settings: dict[str, Any] | None) -> tuple[Any, Any]:
    """The fp32 model with its nodes named (pre-processed as the quantiser's settings say) and
    its all-int8 Q/DQ copy, so that a node of one can be found by name in the other."""
    import onnx

    from nscmonitor.engines.quantize import DEFAULT_SETTINGS, _named_model, quantize_static_qdq

    cfg = {**DEFAULT_SETTINGS, **(settings or {})}
    with tempfile.TemporaryDirectory(prefix="nscm-mixed-") as tmp:
        named = Path(tmp) / "fp32.onnx"
        fp32 = _named_model(Path(fp32_path), named, bool(cfg["preprocess"]), Path(tmp))
        qdq_path = Path(tmp) / "qdq.onnx"
        quantize_static_qdq(named, qdq_path, calib_x, settings={**cfg, "preprocess": False, "bias_correction": False})
        qdq = onnx.load(str(qdq_path))
        unfold_relus(qdq, fp32)
        return fp32, qdq


def surgery_restores_fp32(qdq: Any, fp32: Any, x: np.ndarray, reference: np.ndarray | None = None, *,
                          threads: int = 0) -> bool:
    """Whether the Q/DQ model with every quantised layer given back its fp32 inputs computes
    the fp32 model: the check that the search's graph surgery (``restore_fp32``) understands
    what the quantiser wrote, before any variant is trusted (a ReLU it folded away and nobody
    put back, for one, would leave fp32 layers unclamped)."""
    every = [n for nodes in groups_of(qdq).values() for n in nodes]
    ref = fake_quant_probs(fp32, x, threads=threads) if reference is None else reference
    back = fake_quant_probs(restore_fp32(qdq, fp32, every), x, threads=threads)
    return bool(np.allclose(back, ref, atol=1e-4))


def unfold_relus(qdq: Any, fp32: Any) -> int:
    """Give back, in place, the ReLUs the quantiser folded into their input's rounding
    (``engines.quantize``: with ``Relu`` among its op types a node's output takes the ReLU's
    name and its uint8 zero point of 0 does the clamping). Folded, a layer the search keeps in
    fp32 would hand its raw, unclamped output to readers that are fp32 too. The ReLU is put back
    between the node and the rounding, which rounds exactly the same values (a ReLU before a
    rounding whose zero point is 0 changes nothing), so the all-int8 variant still scores what
    the real file computes. Returns how many were put back."""
    import onnx

    fp_nodes = {n.name: n for n in fp32.graph.node}
    relu_of = {n.input[0]: n for n in fp32.graph.node if n.op_type == "Relu"}
    nodes = list(qdq.graph.node)
    out: list[Any] = []
    count = 0
    for n in nodes:
        out.append(n)
        src = fp_nodes.get(n.name)
        if src is None or n.op_type in ("QuantizeLinear", "DequantizeLinear") or not n.output or not src.output:
            continue
        relu = relu_of.get(src.output[0])
        if n.output[0] != src.output[0] and relu is not None and relu.output[0] == n.output[0]:
            n.output[0] = src.output[0]
            back = onnx.NodeProto()
            back.CopyFrom(relu)
            out.append(back)
            count += 1
    del qdq.graph.node[:]
    qdq.graph.node.extend(out)
    return count


def pseudo_wells(reference: np.ndarray, size: int) -> tuple[str, ...]:
    """Each tile's pseudo-well: tiles grouped by the reference's top class, in index order,
    split into chunks of about ``size`` tiles (a class with fewer tiles is one chunk), so a
    readout over them averages as much per-tile noise as a real well of ``size`` tiles."""
    if size < 1:
        raise ValueError(f"pseudo-well size must be at least 1, got {size}")
    top = reference.argmax(axis=1)
    out = [""] * len(reference)
    for k in np.unique(top):
        idx = np.flatnonzero(top == k)
        for j, chunk in enumerate(np.array_split(idx, max(1, round(len(idx) / size)))):
            for i in chunk:
                out[i] = f"class{k}-{j}"
    return tuple(out)


def typical_well_size(groups: tuple[str, ...] | list[str]) -> int:
    """Median number of tiles per well (the held-out set's, whose wells the gate reads)."""
    from collections import Counter

    counts = list(Counter(groups).values())
    return max(1, int(round(float(np.median(counts))))) if counts else 1


@dataclass
class Probes:
    """What every search of one build shares: the fp32 and Q/DQ models, the fp32 reference on
    the calibration tiles, the surgery check, and the probes already run
    (``engines.search_probes``), so the ladder's retries at tighter margins neither quantise
    again nor score a variant twice."""

    fp32: Any
    qdq: Any
    groups: dict[str, list[str]]
    reference: np.ndarray
    surgery_ok: bool
    runner: ProbeRunner

    @classmethod
    def prepare(cls, fp32_path: str | Path, calib_x: np.ndarray, *, settings: dict[str, Any] | None = None,
                threads: int = 0) -> Probes:
        fp32, qdq = _fp32_and_qdq(fp32_path, calib_x, settings)
        reference = fake_quant_probs(fp32, calib_x, threads=threads)
        ok = surgery_restores_fp32(qdq, fp32, calib_x, reference, threads=threads)
        return cls(fp32, qdq, groups_of(qdq), reference, ok, ProbeRunner(fp32, calib_x, threads=threads, qdq=qdq))

    def probs(self, int8_nodes: list[str]) -> np.ndarray:
        """The calibration tiles' probabilities with exactly ``int8_nodes`` in int8."""
        every = [n for nodes in self.groups.values() for n in nodes]
        keep = set(every) - set(int8_nodes)
        return self.runner.probs(frozenset(int8_nodes), lambda: restore_fp32(self.qdq, self.fp32, keep))


def search(fp32_path: str | Path, calib_x: np.ndarray, calib_groups: tuple[str, ...], *,
           settings: dict[str, Any] | None = None, tolerance: dict[str, float] | None = None,
           max_steps: int = MAX_STEPS, threads: int = 0, progress: Progress | None = None,
           well_size: int | None = None, margin: float = READOUT_MARGIN,
           sensitivity: dict[str, float] | None = None, probes: Probes | None = None) -> SearchResult:
    """Find the fp32 groups (see the module docstring); ``max_steps`` bounds the number of
    model evaluations (one per sensitivity probe and per greedy step; a probe an earlier search
    of the same ``probes`` ran counts without running again). With ``well_size`` (the
    gate's typical tiles per well) variants are scored over pseudo-wells of that size, else
    over ``calib_groups``. ``margin``: the share of the readout tolerance a variant may use
    here; ``sensitivity``: an earlier search's probes of the same model and tiles, reused;
    ``probes``: what an earlier search of the same model and tiles prepared (else prepared here)."""
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    def say(done: int, total: int, msg: str) -> None:
        log.info("mixed precision %d/%d: %s", done, total, msg)  # a background build's log shows it too
        if progress is not None:
            progress(done, total, msg)

    if probes is None:
        probes = Probes.prepare(fp32_path, calib_x, settings=settings, threads=threads)
    groups = probes.groups
    names = list(groups)
    every = [n for g in names for n in groups[g]]
    total = min(max_steps, 1 + 2 * len(names) + sum(len(v) for v in groups.values() if len(v) > 1))
    say(0, total, f"mixed precision: {len(names)} layer groups, evaluating on {len(calib_x)} calibration tiles")
    reference = probes.reference
    if not probes.surgery_ok:
        log.error("mixed precision: %s with every layer restored does not compute the fp32 model (the quantiser "
                  "rewrote the graph in a way the search cannot undo); no mix is searched, every group stays fp32",
                  fp32_path)
        return SearchResult(names, every, False, 1, None, None, {}, len(names), [],
                            well_size=well_size, margin=margin, group_nodes=groups)
    if well_size is not None:
        calib_groups = pseudo_wells(reference, well_size)

    def run(int8_nodes: list[str]) -> _Score:
        return _score(reference, probes.probs(int8_nodes), calib_groups, tol)

    full = run(every)
    steps = 1
    say(steps, total, f"all int8: calibration readout {full.readout_pp:.2f} pp")
    if full.passes(tol, margin):
        return SearchResult([], [], True, steps, full.readout_pp, full.agreement_clear, {}, len(names), names,
                            well_size=well_size, margin=margin, group_nodes=groups)
    alone: dict[str, float] = {g: v for g, v in (sensitivity or {}).items() if g in groups}
    for g in names:
        if g in alone:
            continue
        if steps >= max_steps:
            break
        alone[g] = run(groups[g]).readout_pp
        steps += 1
        say(steps, total, f"{g} alone in int8: calibration readout {alone[g]:.2f} pp")
    int8: list[str] = []
    best: _Score | None = None
    for g in sorted(alone, key=alone.get):
        if steps >= max_steps:
            break
        if alone[g] > margin * tol["well_readout_pp"]:
            continue  # fails on its own: no need to try it with others
        trial = run([n for h in int8 + [g] for n in groups[h]])
        steps += 1
        if trial.passes(tol, margin):
            int8.append(g)
            best = trial
        say(steps, total, f"{len(int8)} group(s) int8: {g} {'added' if int8[-1:] == [g] else 'kept fp32'}")
    int8_nodes = [n for g in int8 for n in groups[g]]
    split, steps, best = _split_refused(run, groups, alone, int8, int8_nodes, steps, max_steps, tol, margin, best,
                                        lambda done, msg: say(done, total, msg))
    kept = [g for g in names if g not in int8]
    nodes = [n for n in every if n not in int8_nodes and n not in split]
    readout, clear = (best.readout_pp, best.agreement_clear) if best else (0.0, 1.0)
    log.info("mixed precision: %d of %d layer groups kept fp32 (%s; %d of their layers int8), calibration readout "
             "%.2f pp; this build's probes so far: %d run whole, %d from where they leave fp32, %d remembered",
             len(kept), len(names), ", ".join(kept), len(split), readout, probes.runner.stats["whole"],
             probes.runner.stats["cut"], probes.runner.stats["memo"])
    return SearchResult(kept, nodes, True, steps, readout, clear, alone, len(names), int8, split,
                        well_size=well_size, margin=margin, group_nodes=groups)


def most_sensitive(result: SearchResult, k: int) -> SearchResult | None:
    """The mix that keeps only the ``k`` groups most sensitive on their own (the search's
    probes on the calibration tiles) fp32 and everything else int8, or None when the probes
    do not cover more than ``k`` groups. Its calibration score is not measured (``passed`` is
    False, the readout None): the held-out gate alone decides."""
    ranked = sorted(result.sensitivity, key=lambda g: -result.sensitivity[g])
    if k < 1 or k >= len(ranked) or not result.group_nodes:
        return None
    keep = set(ranked[:k])
    order = list(result.group_nodes)
    groups = [g for g in order if g in keep]
    return SearchResult(groups, [n for g in groups for n in result.group_nodes[g]], False, result.steps, None, None,
                        dict(result.sensitivity), len(order), [g for g in order if g not in keep],
                        well_size=result.well_size, margin=result.margin, rule=f"most sensitive {k}",
                        group_nodes=result.group_nodes)


def _split_refused(run: Callable[[list[str]], _Score], groups: dict[str, list[str]], alone: dict[str, float],
                   int8: list[str], int8_nodes: list[str], steps: int, max_steps: int, tol: dict[str, float],
                   margin: float, best: _Score | None,
                   say: Callable[[int, str], None]) -> tuple[list[str], int, _Score | None]:
    """The finer pass: a block refused as a whole may still take some of its convolutions in
    int8 (on the ResNet50s here a block's error is not spread evenly over its layers). Each
    refused group of more than one layer, least sensitive first, offers its layers one at a
    time on top of everything int8 so far; a layer stays int8 if the model still passes.
    Returns (layers of refused groups now int8, steps, best score)."""
    split: list[str] = []
    for g in sorted((g for g in alone if g not in int8 and len(groups[g]) > 1), key=alone.get):
        for node in groups[g]:
            if steps >= max_steps:
                return split, steps, best
            trial = run(int8_nodes + split + [node])
            steps += 1
            if trial.passes(tol, margin):
                split.append(node)
                best = trial
            say(steps, f"{g}: {node} {'int8' if split[-1:] == [node] else 'kept fp32'}")
    return split, steps, best


def build_int8(model_path: str | Path, calib: Any, heldout: Any, *, want_openvino: bool, threads: int = 0,
               max_steps: int = MAX_STEPS, progress: Progress | None = None) -> tuple[Path | None, Any, SearchResult | None]:
    """The int8 build with mixed precision as its fallback: the plain recipe first (the demo
    model passes it, and that path stays as fast as before); only when the gate of the runtime
    that would serve it fails, the search picks layers to keep fp32 on the calibration tiles
    and the model is quantised and gated on the held-out tiles once more. First it keeps only
    the one, two, three groups most sensitive on their own fp32 (``most_sensitive``, ranked by
    the search's calibration probes; each gated in turn), then the search's greedy mix. When
    the gate refuses the mix, or the search kept nothing fp32 at all, the search runs again with a tighter margin
    (``SEARCH_MARGINS``, its sensitivity probes reused; ``ladder_step``), so a search that judged
    too generously costs a rebuild, not the engine.
    Returns (int8 path or None, ONNX Runtime's gate report, the search that chose the file, else
    the last search result, or None when none ran); the gate report on disk names the layers
    kept fp32. Every round of the ladder shares one pre-processed model and one fp32 reference
    on the held-out tiles (``quantize.Rounds``)."""
    from nscmonitor.engines.quantize import Rounds

    with tempfile.TemporaryDirectory(prefix="nscm-rounds-") as tmp:
        return _ladder(Path(model_path), calib, heldout, want_openvino, threads, max_steps, progress, Rounds(tmp))


def _ladder(model_path: Path, calib: Any, heldout: Any, want_openvino: bool, threads: int, max_steps: int,
            progress: Progress | None, rounds: Rounds) -> tuple[Path | None, Any, SearchResult | None]:
    from nscmonitor.engines.metadata import read_onnx_metadata
    from nscmonitor.engines.quantize import build_ort_int8
    from nscmonitor.engines.validate import write_report

    recipe = serving_recipe(want_openvino)
    path, report = build_ort_int8(model_path, calib, heldout, threads=threads, settings=recipe, rounds=rounds)
    if _serving_gate_passed(path, report, want_openvino):
        return path, report, None
    meta = read_onnx_metadata(model_path)
    plain = (path, report)
    # the file now at the target (a later build replaces it only when one runtime's gate passes)
    on_disk: tuple[Path, Any, SearchResult | None] | None = (path, report, None) if path is not None else None
    result: SearchResult | None = None
    built: SearchResult | None = None  # the search whose mix was last quantised and gated
    tried: set[tuple[str, ...]] = set()
    ranked_tried = False

    def build(mix: SearchResult) -> bool:
        nonlocal path, report, on_disk, built
        tried.add(tuple(mix.nodes))
        built = mix
        path, report = build_ort_int8(model_path, calib, heldout, threads=threads, rounds=rounds,
                                      settings={**recipe, "exclude_nodes": mix.nodes, "mixed_precision": mix.to_dict()})
        if path is not None:
            on_disk = (path, report, mix)
        return _serving_gate_passed(path, report, want_openvino)

    probes = Probes.prepare(model_path, calib.x, threads=threads)
    for margin in SEARCH_MARGINS:
        result = search(model_path, calib.x, calib.groups, tolerance=dict(meta.int8_tolerance), max_steps=max_steps,
                        threads=threads, progress=progress, well_size=typical_well_size(heldout.groups),
                        margin=margin, sensitivity=result.sensitivity if result else None, probes=probes)
        if not ranked_tried and result.sensitivity:
            ranked_tried = True
            if any(build(mix) for mix in _most_sensitive_rungs(result, tried)):
                break
        step = ladder_step(result)
        if step != "build":
            log.warning("mixed precision at %.0f %% of the tolerance: %s", margin * 100,
                        "no layer group could stay int8" if step == "stop" else
                        "the whole model passed here, but the plain file failed its held-out gate: a tighter margin")
            if step == "stop":
                break
            continue
        if tuple(result.nodes) in tried:  # a tighter margin chose the same mix: no point building it again
            continue
        if build(result):
            break
        log.warning("mixed precision: the mix chosen at %.0f %% of the readout tolerance failed its held-out gate; "
                    "searching again with a tighter margin", margin * 100)
    path, report, chosen, rewrite = ladder_outcome(plain, (path, report), on_disk, built)
    if rewrite:
        from nscmonitor.engines.ort import int8_path_for

        target = int8_path_for(model_path)  # the report beside the file is the file's own, not the last refused mix's
        write_report(report, target.with_name(target.name + ".gate.json"))
    return path, report, chosen if chosen is not None else result


def serving_recipe(want_openvino: bool) -> dict[str, Any]:
    """The CPU file's settings for the runtime that will serve it. Bias correction is measured
    in ONNX Runtime's arithmetic (the file run literally, every Q/DQ as written), which ONNX
    Runtime's int8 kernels follow; OpenVINO fuses and rounds the same file its own way, and on
    it the correction added error once the weights were rounded against their inputs (GPTQ):
    on four trained ResNet50s the tiles' error on OpenVINO rose with it on all four and the
    held-out readout moved 0.83-1.13 pp without it, 1.06-1.86 pp with it, while ONNX Runtime read
    closer with it on three of the four (1.14-1.92 pp with, 1.21-1.71 without;
    docs/performance.md, "Weight rounding that minds the output"). So the file is corrected
    only where ONNX Runtime will serve it (no OpenVINO here)."""
    return {"bias_correction": not want_openvino}


def _most_sensitive_rungs(result: SearchResult, tried: set[tuple[str, ...]]) -> Iterator[SearchResult]:
    """The ladder's first rungs, lazily: the 1, 2, ... ``MOST_SENSITIVE`` groups most
    sensitive on their own kept fp32, each built and gated only if the one before was refused."""
    for k in range(1, MOST_SENSITIVE + 1):
        mix = most_sensitive(result, k)
        if mix is None:
            return
        if tuple(mix.nodes) in tried:
            continue
        log.warning("mixed precision: trying the %d most sensitive layer group(s) in fp32 (%s)", k,
                    ", ".join(mix.groups))
        yield mix


def ladder_outcome(plain: tuple[Path | None, Any], last: tuple[Path | None, Any],
                   on_disk: tuple[Path, Any, SearchResult | None] | None,
                   built: SearchResult | None) -> tuple[Path | None, Any, SearchResult | None, bool]:
    """Which int8 file the ladder leaves behind, with the gate report that belongs to it.

    A refused build deletes only its own part file but writes its report beside the target,
    so after a refused retry the report there describes a mix that is not on disk, while the
    file an earlier rung published (or the plain recipe's, when one runtime passed it) is
    still there and still serves under its own gate. Returns (path, report with the groups
    that file keeps fp32, the search that chose that file or None for the plain file,
    whether the report beside the target must be written again)."""
    from dataclasses import replace

    if built is None:  # no mix was built: the plain recipe's gate stands, its report already on disk
        return plain[0], plain[1], None, False
    path, report = last
    if path is not None:
        return path, replace(report, kept_fp32=tuple(built.groups)), built, True
    if on_disk is not None:
        path, report, chosen = on_disk
        return path, (replace(report, kept_fp32=tuple(chosen.groups)) if chosen else report), chosen, True
    return None, replace(report, kept_fp32=tuple(built.groups)), built, True


def ladder_step(result: SearchResult) -> str:
    """What ``build_int8`` does with one search of its ladder: "build" the mix; "tighten" when
    the search kept nothing in fp32 (its all-int8 variant passed at this margin, yet the plain
    file had failed its held-out gate, so the margin was too generous for this model: pseudo-
    wells can read better than the held-out wells); "stop" when no layer group could stay
    int8, which a tighter margin can only confirm."""
    if not result.nodes:
        return "tighten"
    if not (result.int8_groups or result.int8_split_nodes):
        return "stop"
    return "build"


def _serving_gate_passed(path: Path | None, report: Any, want_openvino: bool) -> bool:
    if path is None:
        return False
    if not want_openvino:
        return bool(report.passed)
    from nscmonitor.engines.metadata import read_onnx_metadata

    from nscmonitor.engines.openvino import GATE_KEYS

    record = read_onnx_metadata(path).extra.get("int8") or {}
    return any((record.get(key) or {}).get("passed") for key in GATE_KEYS.values())
