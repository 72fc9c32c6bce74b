"""Turn a PyTorch module into ONNX bytes and check it in ONNX Runtime."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

OPSET = 17


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    input_name: str,
    output_names: list[str],
    dynamic_batch: str | None = None,
) -> bytes:
    """Export with a fixed input shape (ONNX Runtime re-plans on every new shape).

    `dynamic_batch` names a variable first axis of the input and of every output, for graphs
    that score a varying number of items (the tiles of a part) in one call.
    """
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated since torch 2.9 but still handles these
        # static graphs; the dynamo exporter needs onnxscript, which the line PC never needs.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # Static padding sizes are read from traced shapes on purpose, because the graph has a
        # fixed input size. The exporter also reports each Slice it cannot fold. Neither needs action.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes={name: {0: dynamic_batch} for name in [input_name, *output_names]} if dynamic_batch else None,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def cpu_session(onnx_bytes: bytes):
    """Open exported ONNX bytes in an ONNX Runtime CPU session, for parity checks and calibration."""
    import onnxruntime as ort

    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
