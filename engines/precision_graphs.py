"""The ONNX graphs a strongly typed TensorRT network is parsed from (no TensorRT needed here).

TensorRT 11 builds only strongly typed networks: a layer runs in the type its ONNX tensors
have, and the old "allow fp16/int8" builder flags are gone. So the precision of a TensorRT
engine is decided here, in the graph:

* fp16: the fp32 model converted with onnxconverter-common's ``float16`` converter (the
  ONNX project's own tool), keeping the graph's inputs and outputs fp32 so the engine takes
  and returns numpy float32 like every other backend. NVIDIA's ModelOpt AutoCast does the
  same job; it is not required because the converter is small and pure Python.
* int8: the explicitly quantised (Q/DQ) model the CPU recipe writes beside the model.
  TensorRT's explicit quantisation takes only signed int8 with zero points of 0 (symmetric),
  so ``qdq_problems`` checks that before a build is attempted, with a reason a person can act
  on, instead of a parser error deep inside TensorRT.
"""

from __future__ import annotations

import os
from pathlib import Path

from nscmonitor.engines.base import EngineError

# Ops the converter leaves in fp32 (with casts around them) besides its own default list:
# reductions over a whole tile overflow fp16's 65504 and lose precision in a sum of thousands.
FP16_KEEP_FP32 = ("ReduceSum", "ReduceMean", "ReduceL2", "ReduceSumSquare")


def ood_nodes(model) -> list[str]:
    """The out-of-distribution head's nodes (``training.ood``): kept fp32, since its squared
    distances of whitened features leave fp16's range (as ``engines.quantize`` keeps them)."""
    from nscmonitor.engines.quantize import OOD_SCOPE

    return [n.name for n in model.graph.node if n.name.startswith(OOD_SCOPE)]


def convert_to_fp16(src: str | Path, dst: str | Path) -> Path:
    """Write an fp16 copy of ``src`` with fp32 graph inputs/outputs and the same metadata."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise EngineError("fp16 TensorRT engines on TensorRT 11 need onnxconverter-common "
                          f"(pip install 'nscmonitor[gpu]'): {exc}") from exc
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    try:
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32),
            node_block_list=ood_nodes(model))
    except Exception as exc:  # the converter raises plain ValueError/RuntimeError on odd graphs
        raise EngineError(f"cannot convert {src} to fp16: {exc}") from exc
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    onnx.save(converted, str(part))
    os.replace(part, dst)
    return dst


def qdq_problems(model_path: str | Path) -> list[str]:
    """Why TensorRT's explicit quantisation would not take this Q/DQ model (empty: it would).

    Checks every QuantizeLinear/DequantizeLinear: a zero point must be int8 (signed) and all
    zeros (symmetric); a model with no Q/DQ node at all is not quantised."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    problems: list[str] = []
    n_qdq = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_qdq += 1
        label = f"{node.op_type} {node.name or node.output[0]}"
        if len(node.input) < 3 or not node.input[2]:
            continue  # no zero point: ONNX's default is uint8 for Q, which output_dtype may override
        zp = inits.get(node.input[2]) or consts.get(node.input[2])
        if zp is None:
            problems.append(f"{label}: zero point {node.input[2]!r} is not a constant")
            continue
        if zp.data_type == TensorProto.INT32:
            problems.append(f"{label}: bias quantised to INT32 (ONNX Runtime's QuantizeBias); TensorRT "
                            "quantises to INT8/FP8/INT4/FP4 only, so biases must stay float "
                            "(extra_options QuantizeBias=False)")
        elif zp.data_type != TensorProto.INT8:
            problems.append(f"{label}: zero point is {TensorProto.DataType.Name(zp.data_type)}, "
                            "TensorRT takes signed INT8 only")
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{label}: zero point is not 0 (asymmetric); TensorRT takes symmetric int8 only")
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and (len(node.input) < 3 or not node.input[2]):
            dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            if dtype not in (TensorProto.INT8,):
                problems.append(f"QuantizeLinear {node.name or node.output[0]}: no zero point and no "
                                "output_dtype INT8, so it quantises to uint8")
    if n_qdq == 0:
        problems.append("the model has no QuantizeLinear/DequantizeLinear nodes (not explicitly quantised)")
    return problems
