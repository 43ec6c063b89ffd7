"""The fp32 arithmetic switches: whether fp32 convolutions and matmuls may use TF32 (10-bit
mantissa inputs on Ampere or later GPUs) and whether autocast is on.

Owns: a run's setting (`set_fp32_precision`, from the config's `tf32`), a region in plain fp32
(`strict_fp32`, VAT's probe and the benchmarks' references), and the switches as they are
(`tf32_state`, for the benchmarks' JSON). The trainer, methods/vat.py and benchmarks/ all use
these, so a torch version is handled in one place: torch >= 2.9 has per-operator
`fp32_precision` knobs (and reading its legacy `allow_tf32` flags after the new API was used can
raise); older torch has only the legacy `cudnn.allow_tf32`. Matmuls go through
`torch.set_float32_matmul_precision` in both, which keeps cuBLAS's legacy and per-backend flags
consistent. These are process-wide flags: not for concurrent threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _cudnn_knobs() -> tuple | None:
    """cuDNN's per-operator knobs (convolutions, RNNs) on torch >= 2.9; None before."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):
        return None
    return conv, torch.backends.cudnn.rnn


def _matmul_knobs() -> list:
    """The per-backend matmul knobs that set_float32_matmul_precision writes (torch >= 2.9)."""
    b = torch.backends
    knobs = [getattr(b.cuda, "matmul", None), getattr(getattr(b, "mkldnn", None), "matmul", None)]
    return [k for k in knobs if k is not None and hasattr(k, "fp32_precision")]


def _set_cudnn_tf32(tf32: bool) -> None:
    knobs = _cudnn_knobs()
    if knobs is None:                                      # torch < 2.9: the legacy switch only
        torch.backends.cudnn.allow_tf32 = tf32
        return
    for knob in knobs:
        knob.fp32_precision = "tf32" if tf32 else "ieee"


def _cudnn_state() -> list:
    knobs = _cudnn_knobs()
    return [torch.backends.cudnn.allow_tf32] if knobs is None else [k.fp32_precision for k in knobs]


def _restore_cudnn(saved: list) -> None:
    knobs = _cudnn_knobs()
    if knobs is None:
        torch.backends.cudnn.allow_tf32 = saved[0]
        return
    for knob, value in zip(knobs, saved):
        knob.fp32_precision = value


def set_fp32_precision(tf32: bool, device: torch.device) -> None:
    """The run's fp32 arithmetic on a CUDA device: strict fp32 (tf32=False), or TF32 for cuDNN
    convolutions/RNNs and cuBLAS matmuls. Official code: TF 1.x fp32 on V100s, which have no
    TF32; PyTorch's own default is TF32 for cuDNN convolutions (`torch.backends.cudnn.conv.
    fp32_precision == "tf32"`), so without this a run with amp=none would not be fp32 on an
    Ampere or later GPU. Process-wide flags, set at each run's start (a worker trains its cells
    one after another). Other devices are left alone: on the CPU, TF32 matmul precision would
    reach oneDNN's matmuls."""
    if device.type != "cuda":
        return
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    _set_cudnn_tf32(tf32)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Inside: plain fp32 arithmetic. Autocast is off (on every device type where it is on), and
    TF32 is off for cuDNN convolutions/RNNs and for matmuls; everything is restored on exit."""
    saved_cudnn, saved_precision = _cudnn_state(), torch.get_float32_matmul_precision()
    saved_matmul = [(k, k.fp32_precision) for k in _matmul_knobs()]
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        try:
            torch.set_float32_matmul_precision("highest")
            _set_cudnn_tf32(False)
            yield
        finally:
            torch.set_float32_matmul_precision(saved_precision)
            for knob, value in saved_matmul:
                knob.fp32_precision = value
            _restore_cudnn(saved_cudnn)


def tf32_state() -> dict[str, object]:
    """The TF32 switches as they are now, by name (PyTorch's defaults: TF32 in cuDNN
    convolutions, not in matmuls)."""
    knobs = _cudnn_knobs()
    if knobs is None:
        return {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    return {"cudnn.conv.fp32_precision": knobs[0].fp32_precision,
            "cuda.matmul.fp32_precision": torch.backends.cuda.matmul.fp32_precision}
