"""What a model's out-of-distribution record covers, said once for every face that shows a
model (``nscmonitor doctor``, ``status``, ``models show``, the dashboard's models panel). The
flag is only as good as the tests its model carries: a model exported before a test existed
serves without it, and one from elsewhere may carry none, in which case its readouts say
"unavailable", never "in distribution". A lab manager deciding whether to trust an unattended
week of readouts should see which of them this model has without reading its metadata. Read
from the metadata alone, without opening the graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nscmonitor.core import zoom_response

NO_RECORD = ("the model carries no out-of-distribution score (exported before it had one, or trained "
             "elsewhere): no image is flagged, and its readouts' flag reads 'unavailable'")

#: each test of the zoom record (``zoom_response.TESTS``) in the words the summary uses
TILE_TESTS = ("zoom in (fields of half the magnification whose file states no pixel size)",
              "zoom out (fields of twice the magnification whose file states no pixel size)",
              "contrast sign (inverted or bright-field fields)")


def summary(ood: Mapping[str, Any] | None) -> dict[str, Any]:
    """The record in plain terms: whether a flag is available, its tests, its threshold and
    the share of the model's own images (those its thresholds were set on) it flags. A record
    that cannot be read (a damaged registry row) is said to be so, not raised: every face that
    shows a model keeps showing the others."""
    if not ood:
        return {"available": False, "why": NO_RECORD}
    try:
        return _summary(ood)
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        return {"available": False, "why": f"the model's out-of-distribution record cannot be read ({exc!r})"}


def _summary(ood: Mapping[str, Any]) -> dict[str, Any]:
    tests = ["the graph's score (distance from the training tiles at several depths of the network)"]
    zoom = ood.get("zoom")
    if zoom is not None and not isinstance(zoom, Mapping):
        raise TypeError(f"its zoom record is a {type(zoom).__name__}")
    if zoom:
        tests += [words for words, (key, _) in zip(TILE_TESTS, zoom_response.TESTS) if key in zoom]
    ratio = ood.get("max_pixel_size_ratio")
    if ratio:
        tests.append(f"a file's pixel size over {float(ratio):g}x the model's, either way (another objective)")
    if zoom and "flagged_with_score" in zoom:
        own, images = float(zoom["flagged_with_score"]), int(zoom.get("images", 0))
    else:
        own, images = 1.0 - float(ood.get("quantile", 0.96)), int(ood.get("held_out_images", ood.get("val_images", 0)))
    return {"available": True, "threshold": float(ood["threshold"]), "tests": tests,
            "flags_own_images": own, "of_images": images,
            "threshold_from": ood.get("threshold_from", "validation images")}


def line(s: Mapping[str, Any]) -> str:
    """One line for ``doctor``."""
    if not s["available"]:
        return f"unavailable: {s['why']}"
    n = len(s["tests"])
    return (f"{n} test{'' if n == 1 else 's'}: " + "; ".join(s["tests"])
            + f". Threshold {s['threshold']:.3g}, flags {s['flags_own_images']:.1%} of the model's own "
              f"{s['of_images']} images ({s['threshold_from']})")


def short(s: Mapping[str, Any]) -> str:
    """A table cell (the dashboard's models panel; ``line`` is its tooltip)."""
    if not s["available"]:
        return "unavailable: " + ("the model has none" if s["why"] == NO_RECORD else "its record cannot be read")
    n = len(s["tests"])
    return f"{n} test{'' if n == 1 else 's'}; flags {s['flags_own_images']:.1%} of its own images"
