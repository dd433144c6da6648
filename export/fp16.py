"""FP16 (mixed-precision) ONNX for TensorRT 11, which builds strongly typed networks only:
the precision of every layer comes from the ONNX file, not from a builder flag.

What stays FP32 and why:
- the graph's input and output (`keep_io_types`): the separator hands magnitudes in FP32
  and reads masks in FP32; the casts happen on the GPU;
- the mask-ratio head: every node on a path from the magnitude input to the mask output
  that passes no Conv/ConvTranspose. For Spleeter that is magnitude x sigmoid, its
  square, the sum over stems, the epsilons and the division. Squared magnitudes
  overflow FP16 (max 65504: a magnitude of 256 already squares to it) and the epsilon
  (1e-10) underflows FP16 to 0, which would turn silence into 0/0. The rule needs no
  node names, so it holds for any magnitude-mask model exported the same way;
- the Constant nodes that feed only FP32 nodes (their values keep FP32 range).

The U-Nets' convolutions, batch norms and activations become FP16. Conversion by
a small pass of our own (to_mixed_fp16; see there why not onnxconverter-common);
fidelity is checked on the CPU with ONNX Runtime against the FP32 graph (tests and
`stemlink export tensorrt` both do it).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from stemlink.export.errors import ExportError

LEARNED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def fp32_head(model) -> set[str]:
    """Names of the nodes kept FP32 (see the module docstring)."""
    graph = model.graph
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list] = defaultdict(list)
    producer = {}
    for n in graph.node:
        for t in n.input:
            consumers[t].append(n)
        for t in n.output:
            producer[t] = n
    # forward from the inputs without entering a learned op
    fwd: set[str] = set()
    stack = [c for t in inputs for c in consumers[t]]
    while stack:
        n = stack.pop()
        if n.name in fwd or n.op_type in LEARNED_OPS:
            continue
        fwd.add(n.name)
        stack += [c for t in n.output for c in consumers[t]]
    # backward from the outputs without entering a learned op
    bwd: set[str] = set()
    stack = [producer[t] for t in outputs if t in producer]
    while stack:
        n = stack.pop()
        if n.name in bwd or n.op_type in LEARNED_OPS:
            continue
        bwd.add(n.name)
        stack += [producer[t] for t in n.input if t in producer]
    head = fwd & bwd
    for n in graph.node:  # constants that feed only the head
        if n.op_type == "Constant":
            users = [c for t in n.output for c in consumers[t]]
            if users and all(u.name in head for u in users):
                head.add(n.name)
    return head


def _to_fp16(t):
    """A float32 TensorProto as float16 (values saturated to FP16's range)."""
    import numpy as np
    from onnx import numpy_helper

    a = numpy_helper.to_array(t)
    fmax = float(np.finfo(np.float16).max)
    return numpy_helper.from_array(np.clip(a, -fmax, fmax).astype(np.float16), t.name)


def to_mixed_fp16(model, head: set[str]):
    """Rewrite `model` in place: every float32 tensor of the nodes outside `head` becomes
    float16; Casts are inserted where FP32 and FP16 meet (graph input -> FP16 nodes,
    FP16 nodes -> head). Written by hand because onnxconverter-common's block list casts
    between consecutive blocked nodes too (a FP16 round trip between every head node,
    which overflows the squared magnitudes), checked by ONNX's checker and type inference.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    consumers: dict[str, list] = defaultdict(list)
    for n in graph.node:
        for t in n.input:
            consumers[t].append(n)
    half = [n for n in graph.node if n.name not in head]
    half_names = {n.name for n in half}
    # initializers used only by FP16 nodes
    for init in graph.initializer:
        users = consumers.get(init.name, [])
        if init.data_type == f32 and users and all(u.name in half_names for u in users):
            init.CopyFrom(_to_fp16(init))
    for n in half:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f32:
                a.t.CopyFrom(_to_fp16(a.t))  # Constant and ConstantOfShape values
            if n.op_type == "Cast" and a.name == "to" and a.i == f32:
                a.i = f16
    # boundary casts
    new_nodes = []
    float_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == f32}
    cast_of: dict[tuple[str, int], str] = {}

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in cast_of:
            out = f"{tensor}_as_{'fp16' if to == f16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [tensor], [out], to=to,
                                              name=f"stemlink_cast_{len(cast_of)}"))
            cast_of[key] = out
        return cast_of[key]

    half_outputs = {t for n in half for t in n.output}
    for n in graph.node:
        for k, t in enumerate(n.input):
            if n.name in half_names and t in float_inputs:
                n.input[k] = cast(t, f16)
            elif n.name in head and t in half_outputs:
                n.input[k] = cast(t, f32)
    for o in graph.output:
        if o.name in half_outputs:
            raise ValueError(f"output {o.name} is produced by an FP16 node")
    # casts go right after the producers of what they cast: put them first, then
    # restore topological order
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(_toposort(new_nodes + nodes, {i.name for i in graph.input} |
                                {t.name for t in graph.initializer}))
    del graph.value_info[:]  # stale FP32 annotations; types are inferred again
    return model


def _toposort(nodes: list, available: set[str]) -> list:
    ready = set(available)
    out, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all((not t) or t in ready for t in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a dangling input")
        pending = rest
    return out


def convert_fp16(src: Path, dst: Path) -> dict:
    """Write the mixed-precision graph; returns what was kept FP32 (for the card)."""
    import onnx

    model = onnx.load(str(src))
    for i, n in enumerate(model.graph.node):  # the head is a set of node names
        if not n.name:
            n.name = f"stemlink_unnamed_{i}"
    head = fp32_head(model)
    if not any(n.op_type == "Div" for n in model.graph.node if n.name in head):
        raise ExportError(f"{src}: found no FP32 mask-ratio head (no Div between the "
                          f"magnitude input and the mask output); not a magnitude-mask graph")
    try:
        to_mixed_fp16(model, head)
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (ValueError, onnx.checker.ValidationError,
            onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"FP16 conversion of {src} failed: {e}") from None
    onnx.save(model, str(dst))
    return {"fp32_nodes": sorted(head), "converter": "stemlink.export.fp16"}
