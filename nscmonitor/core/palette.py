"""Class and condition colours, one palette for the dashboard and the HTML report, so a
figure pasted from the report reads like the dashboard it came from.

Okabe-Ito: distinguishable with the common colour-vision deficiencies."""

from __future__ import annotations

CLASS_COLORS = {
    "neuron": (230, 159, 0),
    "astrocyte": (86, 180, 233),
    "oligodendrocyte": (0, 158, 115),
    "undifferentiated": (150, 150, 150),
    "glia": (0, 114, 178),
}
#: the out-of-distribution flag's cross-hatch and outline (orange-red: apart from the class
#: colours, viridis and the grey of 'no data')
OOD_RGB = (235, 80, 20)
_EXTRA = [(204, 121, 167), (213, 94, 0), (240, 228, 66), (0, 114, 178)]
CONDITION_COLORS = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
                    (120, 120, 120), (240, 228, 66), (100, 60, 160), (160, 80, 40)]


def class_color(name: str, i: int = 0) -> tuple[int, int, int]:
    return CLASS_COLORS.get(name, _EXTRA[i % len(_EXTRA)])


def condition_color(i: int) -> tuple[int, int, int]:
    return CONDITION_COLORS[i % len(CONDITION_COLORS)]
