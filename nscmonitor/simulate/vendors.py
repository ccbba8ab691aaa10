"""How each instrument names its files, lays out its folders and finishes a scan.

Names follow ``microscopes.md`` §2 and the shared ``filenames.csv`` table. ``write_mode`` is
how the instrument's software puts an image on disk, which is what a watcher has to survive:
``chunks`` (the file appears and grows: open, write part, flush, pause, write the rest) or
``rename`` (written under a temporary name, then renamed: a move event, not a create).
Sidecars (``.HTD``, ``Index.idx.xml``, ``MeasurementData.mlf``, Micro-Manager
``metadata.txt``) are rewritten at the end of every scan, complete only then.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from xml.sax.saxutils import escape

from nscmonitor.core.domain import PLATE_SHAPES, parse_well
from nscmonitor.simulate.seeds import rng_for

VENDORS = ("incucyte", "imagexpress", "harmony", "cytation", "yokogawa", "micromanager")


@dataclass(frozen=True)
class Shot:
    """One image of a scan: where on the plate, which scan (1-based) and when."""

    plate: str
    well: str  # canonical, A01
    field: int  # 1-based
    timepoint: int  # 1-based scan index
    elapsed_h: float  # hours since induction (the first scan)
    acquired_at: datetime
    position: int  # 0-based stage position in scan order (well-major, then field)

    @property
    def row(self) -> int:
        return parse_well(self.well)[0]

    @property
    def col(self) -> int:
        return parse_well(self.well)[1]

    @property
    def short_well(self) -> str:
        """Unpadded well (A1), as Incucyte, Cytation and Micro-Manager write it."""
        return f"{self.well[0]}{self.col + 1}" if len(self.well) == 3 else self.well


@dataclass(frozen=True)
class Run:
    plate: str
    start: datetime
    seed: int
    plate_format: int
    channel: str  # "Phase Contrast" or "Bright Field"


def _guid(*parts: object) -> str:
    return str(uuid.UUID(bytes=rng_for(*parts).bytes(16), version=4)).upper()


def _elapsed_token(hours: float) -> str:
    minutes = int(round(hours * 60))
    return f"{minutes // 1440:02d}d{minutes // 60 % 24:02d}h{minutes % 60:02d}m"


class Vendor:
    name = ""
    write_mode = "chunks"

    def image_path(self, run: Run, shot: Shot) -> str:
        raise NotImplementedError

    def start_files(self, run: Run) -> list[tuple[str, bytes]]:
        return []

    def scan_end_files(self, run: Run, shots: list[Shot], paths: list[str]) -> list[tuple[str, bytes]]:
        """Sidecars after a scan; ``shots``/``paths`` are every image written so far."""
        return []


class Incucyte(Vendor):
    """Exported images, elapsed-time names: ``VID558_A1_1_00d04h00m.tif``."""

    name, write_mode = "incucyte", "rename"

    def image_path(self, run, shot):
        vid = 100 + run.seed % 900
        return f"VID{vid}_{shot.short_well}_{shot.field}_{_elapsed_token(shot.elapsed_h)}.tif"


class ImageXpress(Vendor):
    """``<plate>/<date>/<acq>/TimePoint_<t>/<plate>_<A01>_s<site>_w1<GUID>.tif`` + ``<plate>.HTD``."""

    name = "imagexpress"

    def _root(self, run):
        return f"{run.plate}/{run.start:%Y-%m-%d}/{1000 + run.seed % 9000}"

    def image_path(self, run, shot):
        guid = _guid(run.seed, run.plate, shot.well, shot.field, shot.timepoint, "guid")
        return f"{self._root(run)}/TimePoint_{shot.timepoint}/{run.plate}_{shot.well}_s{shot.field}_w1{guid}.tif"

    def scan_end_files(self, run, shots, paths):
        rows, cols = PLATE_SHAPES[run.plate_format]
        wells = {(s.row, s.col) for s in shots}
        sites = max(s.field for s in shots)
        lines = ['"HTSInfoFile", Version 1.0', '"Description", "nscmonitor simulated plate"',
                 '"TimePoints", %d' % max(s.timepoint for s in shots), '"XWells", %d' % cols, '"YWells", %d' % rows]
        for r in range(rows):
            lines.append(f'"WellsSelection{r + 1}", ' + ", ".join("TRUE" if (r, c) in wells else "FALSE" for c in range(cols)))
        lines += [f'"Sites", {"TRUE" if sites > 1 else "FALSE"}', f'"XSites", {sites}', '"YSites", 1',
                  '"Waves", TRUE', '"NWavelengths", 1', '"WaveName1", "Phase"', '"EndFile"']
        return [(f"{self._root(run)}/{run.plate}.HTD", ("\r\n".join(lines) + "\r\n").encode())]


class Harmony(Vendor):
    """Operetta/Opera export: ``Images/r01c01f01p01-ch1sk1fk1fl1.tiff`` + ``Images/Index.idx.xml``."""

    name = "harmony"

    def _root(self, run):
        return f"{run.plate}__{run.start:%Y-%m-%dT%H_%M_%S}-Measurement 1/Images"

    def image_path(self, run, shot):
        return f"{self._root(run)}/r{shot.row + 1:02d}c{shot.col + 1:02d}f{shot.field:02d}p01-ch1sk{shot.timepoint}fk1fl1.tiff"

    def scan_end_files(self, run, shots, paths):
        images = "\n".join(
            f'    <Image Version="1"><id>{s.row + 1:02d}{s.col + 1:02d}K{s.timepoint}F{s.field}P1R1</id>'
            f"<URL>{escape(p.rsplit('/', 1)[-1])}</URL><Row>{s.row + 1}</Row><Col>{s.col + 1}</Col>"
            f"<FieldID>{s.field}</FieldID><PlaneID>1</PlaneID><TimepointID>{s.timepoint}</TimepointID>"
            f"<ChannelID>1</ChannelID><AbsTime>{s.acquired_at.isoformat()}</AbsTime></Image>"
            for s, p in zip(shots, paths)
        )
        xml = (f'<?xml version="1.0" encoding="utf-8"?>\n<EvaluationInputData Version="2">\n'
               f"  <Plates><Plate><PlateID>{escape(run.plate)}</PlateID></Plate></Plates>\n"
               f"  <Images>\n{images}\n  </Images>\n</EvaluationInputData>\n")
        return [(f"{self._root(run)}/Index.idx.xml", xml.encode())]


class Cytation(Vendor):
    """Gen5 image folder: ``A1_01_1_<field>_Phase Contrast_<seq:03d>.tif`` (seq = kinetic read)."""

    name = "cytation"

    def image_path(self, run, shot):
        return (f"{run.plate}_{run.start:%y%m%d}_{run.start:%H%M%S}/"
                f"{shot.short_well}_01_1_{shot.field}_{run.channel}_{shot.timepoint:03d}.tif")


class Yokogawa(Vendor):
    """CellVoyager: ``<plate>_A01_T0001F001L01A01Z01C01.tif`` + ``MeasurementData.mlf``."""

    name, write_mode = "yokogawa", "rename"

    def image_path(self, run, shot):
        return f"{run.plate}/{run.plate}_{shot.well}_T{shot.timepoint:04d}F{shot.field:03d}L01A01Z01C01.tif"

    def start_files(self, run):
        mrf = ('<?xml version="1.0" encoding="utf-8"?>\n<bts:MeasurementDetail '
               'xmlns:bts="http://www.yokogawa.co.jp/BTS/BTSSchema/1.0" bts:Version="1.0">\n'
               '  <bts:MeasurementChannel bts:Ch="1" bts:HorizontalPixelDimension="1.24" /></bts:MeasurementDetail>\n')
        return [(f"{run.plate}/MeasurementDetail.mrf", mrf.encode())]

    def scan_end_files(self, run, shots, paths):
        recs = "\n".join(
            f'  <bts:MeasurementRecord bts:Type="IMG" bts:TimePoint="{s.timepoint}" bts:FieldIndex="{s.field}" '
            f'bts:ZIndex="1" bts:TimelineIndex="1" bts:ActionIndex="1" bts:Action="2D" bts:Ch="1" '
            f'bts:Row="{s.row + 1}" bts:Column="{s.col + 1}" bts:Time="{s.acquired_at.isoformat()}">'
            f"{escape(p.rsplit('/', 1)[-1])}</bts:MeasurementRecord>"
            for s, p in zip(shots, paths)
        )
        xml = ('<?xml version="1.0" encoding="utf-8"?>\n<bts:MeasurementData '
               'xmlns:bts="http://www.yokogawa.co.jp/BTS/BTSSchema/1.0" bts:Version="1.0">\n'
               f"{recs}\n</bts:MeasurementData>\n")
        return [(f"{run.plate}/MeasurementData.mlf", xml.encode())]


class MicroManager(Vendor):
    """Separate image files per HCS position: ``<acq>_1/A1-Site_0/img_channel000_position000_time000000000_z000.tif``
    (position, time and site 0-based) + ``metadata.txt`` per position."""

    name = "micromanager"

    def _pos_dir(self, run, shot):
        return f"{run.plate}_1/{shot.short_well}-Site_{shot.field - 1}"

    def image_path(self, run, shot):
        return (f"{self._pos_dir(run, shot)}/img_channel000_position{shot.position:03d}"
                f"_time{shot.timepoint - 1:09d}_z000.tif")

    def scan_end_files(self, run, shots, paths):
        per_pos: dict[str, dict] = {}
        for s, p in zip(shots, paths):
            d = per_pos.setdefault(self._pos_dir(run, s), {"Summary": {"Prefix": run.plate, "Channels": 1}})
            d[f"FrameKey-{s.timepoint - 1}-0-0"] = {
                "FileName": p.rsplit("/", 1)[-1], "PositionName": f"{s.short_well}-Site_{s.field - 1}",
                "ElapsedTime-ms": round(s.elapsed_h * 3.6e6), "Frame": s.timepoint - 1,
            }
        return [(f"{k}/metadata.txt", json.dumps(v, indent=1).encode()) for k, v in sorted(per_pos.items())]


_BY_NAME = {c.name: c for c in (Incucyte, ImageXpress, Harmony, Cytation, Yokogawa, MicroManager)}


def vendor(name: str) -> Vendor:
    try:
        return _BY_NAME[name]()
    except KeyError:
        raise ValueError(f"unknown vendor {name!r}; choose from {', '.join(VENDORS)}") from None


def acquired_at(start: datetime, hours: float, position: int, seconds_per_image: float) -> datetime:
    return start + timedelta(hours=hours, seconds=position * seconds_per_image)
