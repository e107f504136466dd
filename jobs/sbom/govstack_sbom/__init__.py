"""govstack-sbom: the CycloneDX SBOM of an offline image, made in a build stage."""

__version__ = "1.0.0"
