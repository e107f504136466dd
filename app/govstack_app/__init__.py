"""govstack-app: document upload, indexing and search service (API + worker in one package)."""

__version__ = "0.1.0"
