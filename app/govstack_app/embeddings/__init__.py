"""Embedding providers: local all-MiniLM-L6-v2 in numpy, or a remote OpenAI-compatible /v1/embeddings."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..settings import Settings


class EmbeddingError(RuntimeError):
    """The provider could not produce vectors (remote error, bad response, ...)."""


class Embedder(Protocol):
    model_name: str

    @property
    def dimension(self) -> int | None: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


def make_embedder(settings: Settings) -> Embedder:
    if settings.embedding_provider == "minilm-local":
        if settings.embedding_backend == "onnx":
            from .minilm_onnx import MiniLMOnnx

            return MiniLMOnnx.from_installed_package()
        from .minilm import MiniLM

        return MiniLM.from_installed_package()
    from .remote import OpenAICompatible

    return OpenAICompatible(
        url=settings.embedding_url,
        model=settings.embedding_model,
        api_key=settings.embedding_api_key(),
    )
