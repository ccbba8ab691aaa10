"""Procedural NSC culture images and a microscope that writes them like a vendor does.

The core (culture, morphology, optics, render) needs only numpy and scipy; it never imports
torch or Qt. See docs/simulator.md.
"""

from __future__ import annotations

from nscmonitor.simulate.artefacts import Artefacts
from nscmonitor.simulate.culture import DEFAULT_CONDITIONS, Condition, ConditionMap, default_plate_map, load_condition_map
from nscmonitor.simulate.demo_experiment import demo_plate
from nscmonitor.simulate.microscope import Frame, Microscope
from nscmonitor.simulate.render import Camera
from nscmonitor.simulate.labelled_tiles import export_tiles
from nscmonitor.simulate.vendors import VENDORS

__all__ = [
    "Artefacts", "Camera", "Condition", "DEFAULT_CONDITIONS", "Frame", "Microscope", "ConditionMap", "VENDORS",
    "default_plate_map", "demo_plate", "export_tiles", "load_condition_map",
]
