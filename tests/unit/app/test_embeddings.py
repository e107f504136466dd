"""all-MiniLM-L6-v2 in numpy against the committed sentence-transformers golden vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from govstack_app.embeddings import minilm
from govstack_app.embeddings.minilm import MODEL_SHA256, MiniLM, ModelIntegrityError, find_model_dir

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "embeddings" / "minilm_golden.json"


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM.from_installed_package()


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_golden_fixture_covers_the_required_cases(golden: dict) -> None:
    items = golden["items"]
    assert len(items) >= 20
    assert golden["made_with"]["torch"].startswith("2.13.0")
    assert golden["model_safetensors_sha256"] == MODEL_SHA256
    assert any(it["text"] == "" for it in items), "empty text"
    assert any(it["tokens_untruncated"] > 256 for it in items), "long text"
    assert any("Habari" in it["text"] for it in items), "Swahili"
    assert any("def add" in it["text"] for it in items), "code"


def test_every_golden_text_matches_sentence_transformers(model: MiniLM, golden: dict) -> None:
    texts = [it["text"] for it in golden["items"]]
    ref = np.array([it["vector"] for it in golden["items"]], dtype=np.float64)
    got = model.embed(texts).astype(np.float64)
    assert got.shape == ref.shape == (len(texts), 384)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.9999, f"cosine {cos[worst]:.6f} for text #{worst}: {texts[worst][:60]!r}"


def test_batching_does_not_change_vectors(model: MiniLM, golden: dict) -> None:
    texts = [it["text"] for it in golden["items"]][:6]
    together = model.embed(texts)
    alone = np.stack([model.embed([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_tokenizer_truncates_at_256_and_pads_to_longest(model: MiniLM) -> None:
    long_text = "word " * 1000
    enc = model.tokenizer.encode_batch([long_text, "short"])
    assert len(enc[0].ids) == 256 and len(enc[1].ids) == 256  # padded to the longest
    assert sum(enc[1].attention_mask) == 3  # [CLS] short [SEP]
    enc = model.tokenizer.encode_batch(["a", "b c"])
    assert len(enc[0].ids) == 4  # not the shipped fixed 128


def test_empty_input_list(model: MiniLM) -> None:
    assert model.embed([]).shape == (0, 384)


@pytest.mark.parametrize("backend", ["numpy", "onnx"])
def test_weights_are_verified(tmp_path: Path, backend: str) -> None:
    from govstack_app.embeddings.minilm_onnx import MiniLMOnnx

    src = find_model_dir()
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    data = bytearray((src / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match"):
        MiniLM(tmp_path) if backend == "numpy" else MiniLMOnnx(tmp_path)


def test_erf_matches_math_erf() -> None:
    import math

    xs = np.linspace(-6, 6, 2001, dtype=np.float32)
    got = minilm._erf(xs)
    want = np.array([math.erf(float(x)) for x in xs])
    assert np.max(np.abs(got - want)) < 5e-7
