"""Static int8 (QDQ) quantisation of the streaming graph with ONNX Runtime's quantiser,
calibrated on magnitude windows of real music (the windows the streaming separator
really feeds the model). The mask-ratio head (squares of magnitudes, the sum, the
division: see fp16.fp32_head) is excluded and stays FP32: int8 cannot hold squared
magnitudes to any useful precision.

Used by `stemlink bench int8`, which measures whether it is worth keeping (issue 11,
item 5: >= 1.5x faster at <= 0.3 dB fidelity cost).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemlink.export.errors import ExportError

INT8_FILE = "model-int8.onnx"


class _Windows:
    """onnxruntime.quantization.CalibrationDataReader over an array of windows."""

    def __init__(self, name: str, windows: np.ndarray) -> None:
        self.name, self.windows, self.i = name, windows, 0

    def get_next(self):
        if self.i >= len(self.windows):
            return None
        w = self.windows[self.i:self.i + 1]
        self.i += 1
        return {self.name: w}

    def rewind(self) -> None:
        self.i = 0


QUANTIZED_OPS = ("Conv", "ConvTranspose")  # where the compute is; the rest stays FP32


def quantize_int8(src: Path, dst: Path, windows: np.ndarray, method: str = "percentile") -> dict:
    """Write the QDQ int8 graph; `windows` float32 [N, C, W, bins] from real music."""
    import onnx

    try:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ExportError("int8 quantisation needs onnxruntime's quantization tools") from None
    from stemlink.export.fp16 import fp32_head

    if windows.ndim != 4 or len(windows) < 8:
        raise ExportError("calibration needs at least 8 windows of real audio")
    pre = dst.with_suffix(".pre.onnx")
    # pre-processing folds batch norms into the convolutions (so that int8 applies to the
    # folded weights); the FP32 head is found on the graph that is quantised
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    head = sorted(fp32_head(model))
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    try:
        quantize_static(
            str(pre), str(dst), _Windows(model.graph.input[0].name,
                                         windows.astype(np.float32)),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[method], nodes_to_exclude=head,
            op_types_to_quantize=list(QUANTIZED_OPS),
            extra_options={"CalibPercentile": 99.999} if method == "percentile" else {})
    finally:
        pre.unlink(missing_ok=True)
    return {"file": dst.name, "calibration_windows": int(len(windows)), "method": method,
            "quantized_ops": list(QUANTIZED_OPS), "excluded_nodes": head}
