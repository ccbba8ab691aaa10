"""Inference engines: numpy in, numpy out. Heavy runtimes are imported inside ``load()``
so that the CPU install needs neither torch nor TensorRT."""

from nscmonitor.engines.base import Engine, EngineError
from nscmonitor.engines.metadata import MetadataError, ModelMetadata, read_onnx_metadata

__all__ = ["Engine", "EngineError", "MetadataError", "ModelMetadata", "read_onnx_metadata"]
