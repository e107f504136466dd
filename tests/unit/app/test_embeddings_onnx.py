"""all-MiniLM-L6-v2 on ONNX Runtime: the onnx.helper graph over the wheel's safetensors against the
committed sentence-transformers golden vectors and the numpy backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from govstack_app import cpulimit
from govstack_app.embeddings import make_embedder, onnx_graph
from govstack_app.embeddings.minilm import MiniLM, ModelIntegrityError, find_model_dir
from govstack_app.embeddings.minilm_onnx import MiniLMOnnx
from govstack_app.settings import Settings

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "embeddings" / "minilm_golden.json"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ort_model() -> MiniLMOnnx:
    return MiniLMOnnx.from_installed_package()


def cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    return (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))


def test_every_golden_vector_matches_sentence_transformers(ort_model: MiniLMOnnx, golden: dict) -> None:
    texts = [it["text"] for it in golden["items"]]
    ref = np.array([it["vector"] for it in golden["items"]], dtype=np.float64)
    got = ort_model.embed(texts)
    assert got.dtype == np.float32 and got.shape == ref.shape == (len(texts), 384)
    cos = cosines(got, ref)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.99999, f"cosine {cos[worst]:.7f} for text #{worst}: {texts[worst][:60]!r}"
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_one_text_at_a_time_gives_the_batched_vectors(ort_model: MiniLMOnnx, golden: dict) -> None:
    # padding to the longest text of a batch must not leak into the shorter texts' vectors
    texts = [it["text"] for it in golden["items"]]
    together = ort_model.embed(texts)
    alone = np.stack([ort_model.embed([t])[0] for t in texts])
    assert cosines(together, alone).min() >= 0.99999


def test_empty_input_list(ort_model: MiniLMOnnx) -> None:
    assert ort_model.embed([]).shape == (0, 384)


def test_graph_is_deterministic_and_carries_no_weights() -> None:
    model_dir = find_model_dir()
    first, second = onnx_graph.graph_bytes(model_dir), onnx_graph.graph_bytes(model_dir)
    assert first == second
    assert len(first) < 200_000  # the 90 MB of weights stay in model.safetensors
    model = onnx.load_from_string(first)
    size = (model_dir / onnx_graph.WEIGHTS_FILENAME).stat().st_size
    external = [t for t in model.graph.initializer if t.external_data]
    assert len(external) == 6 * 16 + 5  # 16 tensors per encoder layer, 5 in the embeddings
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        assert info["location"] == onnx_graph.WEIGHTS_FILENAME
        offset, length = int(info["offset"]), int(info["length"])
        assert offset % 4 == 0 and offset + length <= size
        assert length == 4 * int(np.prod(tensor.dims))


def test_safetensors_layout_reads_the_header(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, dtype=np.float32)}, str(path))
    layout = onnx_graph.safetensors_layout(path)
    raw = path.read_bytes()
    for name, want in (("a", np.arange(6, dtype=np.float32)), ("b", np.ones(4, dtype=np.float32))):
        info = layout[name]
        got = np.frombuffer(raw[info["offset"] : info["offset"] + info["length"]], dtype="<f4")
        assert np.array_equal(got, want)
    assert layout["a"]["shape"] == [2, 3] and layout["a"]["dtype"] == "F32"


def test_implausible_safetensors_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="implausible"):
        onnx_graph.safetensors_layout(path)


def test_the_graph_written_at_image_build_is_the_one_loaded(tmp_path: Path, golden: dict) -> None:
    path = onnx_graph.write_graph(find_model_dir(), tmp_path / "share" / onnx_graph.GRAPH_FILENAME)
    model = MiniLMOnnx.from_installed_package(graph_path=path, verify=False, threads=1)
    assert model.graph_source == str(path)
    item = golden["items"][0]
    assert cosines(model.embed([item["text"]]), np.array([item["vector"]])).min() >= 0.99999


def test_no_graph_and_no_onnx_package_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # as in the final image: onnx is build-only
    with pytest.raises(ModelIntegrityError, match="no ONNX graph at .*GOVSTACK_EMBEDDING_BACKEND=numpy"):
        MiniLMOnnx.from_installed_package(graph_path=tmp_path / "missing.onnx", verify=False)


def test_backend_setting_chooses_the_implementation(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().embedding_backend == "onnx"
    assert isinstance(make_embedder(Settings()), MiniLMOnnx)
    monkeypatch.setenv("GOVSTACK_EMBEDDING_BACKEND", "numpy")
    embedder = make_embedder(Settings())
    # one model name for both: collections embedded by either backend are searched by the other
    assert isinstance(embedder, MiniLM) and embedder.model_name == MiniLMOnnx.model_name
    monkeypatch.setenv("GOVSTACK_EMBEDDING_BACKEND", "torch")
    with pytest.raises(ValueError, match="embedding_backend"):
        Settings()


def test_threads_follow_the_container_cpu_quota(ort_model: MiniLMOnnx) -> None:
    assert ort_model.threads == cpulimit.thread_budget()


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("100000 100000", 1.0), ("50000 100000", 0.5),
     ("", None), ("garbage", None), ("-1 100000", None), ("100000 0", None), ("x y", None)],
)
def test_cgroup_v2_cpu_max_is_parsed(cpu_max: str, cpus: float | None) -> None:
    assert cpulimit.parse_cpu_max(cpu_max) == cpus


def test_cgroup_v1_quota_is_the_fallback(tmp_path: Path) -> None:
    (tmp_path / "quota").write_text("200000\n")
    (tmp_path / "period").write_text("100000\n")
    assert cpulimit.cgroup_cpu_limit(tmp_path / "absent", tmp_path / "quota", tmp_path / "period") == 2.0
    (tmp_path / "quota").write_text("-1\n")  # v1: no quota
    assert cpulimit.cgroup_cpu_limit(tmp_path / "absent", tmp_path / "quota", tmp_path / "period") is None
    assert cpulimit.cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent", tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("limit", "cpus", "threads"),
    [(None, 2, 2), (1.0, 2, 1), (1.5, 2, 2), (0.25, 2, 1), (4.0, 2, 2), (2.0, 8, 2), (None, 1, 1)],
)
def test_thread_budget(limit: float | None, cpus: int, threads: int) -> None:
    assert cpulimit.thread_budget(limit, cpus) == threads
