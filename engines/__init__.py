"""Inference engines: numpy in, numpy out. Heavy runtimes are imported inside ``load()``
so that the CPU install needs neither torch nor TensorRT.

``select(model_path, prefer="auto", ...)`` returns the best certified backend that loads here
(see engines/select.py); import the submodule itself with ``from nscmonitor.engines.select
import ...`` since the package attribute ``select`` is the function."""

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import MetadataError, ModelMetadata, read_onnx_metadata
from nscmonitor.engines.select import Selection, select

__all__ = ["Engine", "EngineError", "MetadataError", "ModelMetadata", "Selection", "read_onnx_metadata", "select"]
