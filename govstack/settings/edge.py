"""``govstack.edge``: nginx, TLS and the public ports."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from govstack.settings.base import Section


class EdgeSettings(Section):
    hostname: str = Field("localhost", pattern=r"^[A-Za-z0-9.-]+$", description="public name; the TLS SAN")
    bind_address: str = "0.0.0.0"  # noqa: S104 - the edge is meant to be public
    http_port: int = Field(80, ge=1, le=65535)
    https_port: int = Field(443, ge=1, le=65535)
    # None: a self-signed certificate is generated for `hostname`.
    tls_cert_path: str | None = Field(None, description="PEM on the host; null = self-signed for hostname")
    tls_key_path: str | None = Field(None, description="PEM key on the host, with tls_cert_path")
    hsts_max_age_s: int = Field(63072000, ge=0)
    api_rate_per_s: int = Field(10, ge=1, description="per client address; 429 beyond rate + burst")
    api_burst: int = Field(20, ge=0)
    upload_rate_per_s: int = Field(1, ge=1, description="per client address, upload endpoint")
    upload_burst: int = Field(5, ge=0)
    extra_server_config: str = Field(
        "", description="raw nginx directives for the HTTPS server block; nginx -t checks them at deploy"
    )

    @field_validator("bind_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> EdgeSettings:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be set together")
        if self.http_port == self.https_port:
            raise ValueError("http_port and https_port must differ")
        return self
