"""ONNX Runtime session creation with explicit threads, provider checks and warm-up."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

from edge.config import InferenceConfig

log = structlog.get_logger(__name__)


class SessionError(RuntimeError):
    """A session that cannot run as configured; the message states what to change."""


def create_session(onnx_path: Path, config: InferenceConfig) -> ort.InferenceSession:
    """Create a session on the configured providers, failing when CUDA was requested but is not used."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would compete with capture and decision threads for the few cores of a line PC.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    requested = list(config.providers)
    if "CUDAExecutionProvider" in requested and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SessionError(
            "CUDAExecutionProvider was requested, but this onnxruntime build has no CUDA support "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or set "
            "inference.providers to [CPUExecutionProvider]"
        )

    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=requested)
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise SessionError(f"cannot load {onnx_path} into ONNX Runtime ({error}); export the model again") from error

    # The CUDA provider can fall back to CPU silently while still being listed as available
    # (onnxruntime#23372), so check what the session really runs on.
    active = session.get_providers()
    if "CUDAExecutionProvider" in requested and "CUDAExecutionProvider" not in active:
        raise SessionError(
            f"CUDAExecutionProvider was requested, but the session runs on {active}; check the CUDA and cuDNN "
            "libraries (onnxruntime logs the missing one) or set inference.providers to [CPUExecutionProvider]"
        )
    log.info("session created", model=str(onnx_path), providers=active, intra_op_num_threads=config.intra_op_num_threads)
    return session


def warm_up(session: ort.InferenceSession, runs: int) -> float:
    """Run the session on zeros of its fixed input shape; return the first run's duration in ms."""
    model_input = session.get_inputs()[0]
    shape = [dimension if isinstance(dimension, int) else 1 for dimension in model_input.shape]
    zeros = np.zeros(shape, dtype=np.float32)

    first_ms = 0.0
    for index in range(runs):
        started = time.perf_counter()
        session.run(None, {model_input.name: zeros})
        if index == 0:
            first_ms = (time.perf_counter() - started) * 1000.0
    log.info("session warmed up", runs=runs, first_run_ms=round(first_ms, 1))
    return first_ms
