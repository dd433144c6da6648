"""Locally built models for tests and benchmarks, since no pretrained HTDemucs or MDX-Net
weights can be downloaded here: real model classes and real file formats, random weights.

- `random_htdemucs`: an HTDemucs from the `demucs` package, randomly initialised, saved
  as the `.th` package the official releases use ({klass, args, kwargs, state}, the dict
  demucs.states.serialize_model builds) or as {state, kwargs}. `--full-size` keeps the
  released architecture (channels 48, depth 4, 5 transformer layers): random weights, real
  compute per window.
- `mdx_onnx`: an ONNX file with the UVR/MDX-Net layout, input [B, 4, dim_f, dim_t] ->
  output the same shape: `identity` returns its input, `zeros` returns zeros, `gain`
  multiplies by 0.5 (a linear stem estimate with a known answer).
"""

from __future__ import annotations

from pathlib import Path

from stemlink.export.errors import ExportError

MDX_KINDS = ("identity", "zeros", "gain")
SMALL = {"channels": 8, "depth": 4, "t_layers": 1, "t_heads": 2}


def random_htdemucs(path: str | Path, sources: list[str], *, segment: float = 1.0,
                    seed: int = 0, full_size: bool = False, fmt: str = "package",
                    half: bool = False) -> Path:
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state

    torch.manual_seed(seed)
    kw = {} if full_size else dict(SMALL)
    model = HTDemucs(sources=list(sources), segment=segment, **kw)
    args, kwargs = model._init_args_kwargs
    state = get_state(model, None, half=half)
    if fmt == "package":
        pkg = {"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": state,
               "training_args": {}}
    elif fmt == "state":
        pkg = {"state": state, "kwargs": kwargs}
    else:
        raise ExportError(f"unknown checkpoint format {fmt!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pkg, str(p))
    return p


def mdx_onnx(path: str | Path, kind: str = "identity", dim_f: int = 2048,
             dim_t: int = 256, channels: int = 4) -> Path:
    import onnx
    from onnx import TensorProto, helper

    if kind not in MDX_KINDS:
        raise ExportError(f"kind must be one of {', '.join(MDX_KINDS)}")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                      ["batch", channels, dim_f, dim_t])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                      ["batch", channels, dim_f, dim_t])
    if kind == "identity":
        nodes, inits = [helper.make_node("Identity", ["input"], ["output"])], []
    else:
        k = helper.make_tensor("k", TensorProto.FLOAT, [], [0.0 if kind == "zeros" else 0.5])
        nodes, inits = [helper.make_node("Mul", ["input", "k"], ["output"])], [k]
    graph = helper.make_graph(nodes, f"mdx-{kind}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="stemlink-testmodels")
    model.ir_version = 8
    onnx.checker.check_model(model)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(p))
    return p
