"""A minimal ND2 (version 3 chunk layout) writer for tests.

No library on PyPI writes ND2 (Nikon's SDK and the ``nd2`` package only read it), and no small
ND2 sample with a licence that allows shipping it can be installed. This writes the documented
container the ``nd2`` package parses: the file-signature chunk, ``ImageAttributesLV!``,
``ImageMetadataSeqLV|0!`` (channel names, calibration) and ``ImageMetadataLV!`` (an XY position
loop with named points) as CLx XML variants, one ``ImageDataSeq|N!`` chunk per position whose
pixels start 4096 bytes after the chunk (channels interleaved per pixel), and the chunk map at
the end. A time-lapse adds a time loop around the position loop, NIS-Elements' frame-time record
(``CustomData|AcqTimesCache!``, milliseconds per frame) and the start as a Julian day
(``dTimeAbsolute``). It is checked against the ``nd2`` package's own reader in the tests that
use it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

MAGIC = 0x0ABECEDA
CHUNK_HEADER = struct.Struct("<IIQ")


def _xml(name: str, value: object) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml(k, v) for k, v in value.items())
        return f'<{name} runtype="CLxListVariant">{inner}</{name}>'
    if isinstance(value, list):
        inner = "".join(_xml("no_name", v) for v in value)
        return f'<{name} runtype="CLxListVariant">{inner}</{name}>'
    if isinstance(value, bool):
        return f'<{name} runtype="bool" value="{str(value).lower()}"/>'
    if isinstance(value, int):
        return f'<{name} runtype="lx_uint32" value="{value}"/>'
    if isinstance(value, float):
        return f'<{name} runtype="double" value="{value!r}"/>'
    return f'<{name} runtype="CLxStringW" value={quoteattr(str(value))}/>'


def _variant(name: str, value: object) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><variant version="1.0">{_xml(name, value)}</variant>'.encode()


def write_nd2(path: Path, frames: np.ndarray, channel_names: list[str], position_names: list[str] | None = None,
              pixel_um: float = 0.65, times_ms: list[float] | None = None, start_jdn: float = 0.0,
              declared_t: int | None = None) -> Path:
    """``frames``: positions x channels x Y x X, or time points x positions x channels x Y x X
    (a time loop around the position loop), written as uint16. ``times_ms``: each frame's
    offset from the start in acquisition order (time points outer), as NIS-Elements records it;
    ``start_jdn``: the start as a Julian day (0: a file without one); ``declared_t``: a time loop
    count to state instead of the true one (a corrupt or hostile file)."""
    frames = np.asarray(frames, np.uint16)
    n_t = frames.shape[0] if frames.ndim == 5 else 1
    frames = frames.reshape(-1, *frames.shape[-3:])  # acquisition order: time points outer, positions inner
    n_p = frames.shape[0] // n_t
    n_c, h, w = frames.shape[1:]
    out = bytearray()
    chunkmap = []

    def chunk(name: bytes, data: bytes, name_len: int | None = None) -> None:
        off = len(out)
        nl = name_len if name_len is not None else len(name)
        out.extend(CHUNK_HEADER.pack(MAGIC, nl, len(data)))
        out.extend(name.ljust(nl, b"\0"))
        out.extend(data)
        chunkmap.append((name, off, len(data)))

    out.extend(CHUNK_HEADER.pack(MAGIC, 32, 64) + b"ND2 FILE SIGNATURE CHUNK NAME01!" + b"Ver3.0".ljust(64, b"\0"))
    attrs = {"uiWidth": w, "uiHeight": h, "uiWidthBytes": w * 2 * n_c, "uiBpcInMemory": 16, "uiBpcSignificant": 16,
             "uiComp": n_c, "uiSequenceCount": n_t * n_p, "eCompression": 2}
    chunk(b"ImageAttributesLV!", _variant("SLxImageAttributes", attrs))
    def spectrum(nm: float) -> dict:
        return {"pPoint": [{"dTValue": 1.0, "dWavelength": float(nm), "eType": 1}]}

    planes = {f"a{i}": {"sDescription": n, "uiCompCount": 1, "uiSampleIndex": i,
                        "pFluorescentProbe": {"m_ExcitationSpectrum": spectrum(400 + 50 * i),
                                              "m_EmissionSpectrum": spectrum(450 + 50 * i)}}
              for i, n in enumerate(channel_names)}
    meta = {"bCalibrated": True, "dCalibration": float(pixel_um), "dTimeAbsolute": float(start_jdn),
            "sPicturePlanes": {"uiCount": n_c, "sPlaneNew": planes}}
    chunk(b"ImageMetadataSeqLV|0!", _variant("SLxPictureMetadata", meta))
    exp = None
    if n_p > 1 or position_names:
        names = position_names or [f"#{i + 1}" for i in range(n_p)]
        exp = {"eType": 2, "uLoopPars": {"Points": [{"dPosX": float(i), "dPosY": 0.0, "dPosZ": 0.0, "dPosName": nm}
                                                    for i, nm in enumerate(names)]}}
    if n_t > 1:
        period = float(times_ms[n_p] - times_ms[0]) if times_ms is not None else 1000.0
        loop = {"eType": 1, "uLoopPars": {"uiCount": declared_t or n_t, "dStart": 0.0, "dPeriod": period,
                                          "dDuration": 0.0}}
        exp = {**loop, "ppNextLevelEx": {"i0000000000": exp}} if exp else loop
    if exp is not None:
        chunk(b"ImageMetadataLV!", _variant("SLxExperiment", exp))
    if times_ms is not None:
        chunk(b"CustomData|AcqTimesCache!", np.asarray(times_ms, "<f8").tobytes())
    for i in range(len(frames)):
        pix = np.ascontiguousarray(frames[i].transpose(1, 2, 0)).tobytes()
        # frame data starts 4096 bytes after the chunk: 16-byte header, name padded, 8-byte time stamp
        stamp = float(times_ms[i]) if times_ms is not None else 0.0
        chunk(f"ImageDataSeq|{i}!".encode(), struct.pack("<d", stamp) + pix, name_len=4096 - 16 - 8)
    loc = len(out)
    body = b"".join(name + struct.pack("<QQ", off, size) for name, off, size in chunkmap)
    sig = b"ND2 CHUNK MAP SIGNATURE 0000001!"
    data = body + sig + struct.pack("<Q", loc)
    out.extend(CHUNK_HEADER.pack(MAGIC, 32, len(data)) + b"ND2 FILEMAP SIGNATURE NAME 0001!" + data)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(bytes(out))
    return Path(path)
