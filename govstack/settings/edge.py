"""``govstack.edge``: nginx, TLS and the public ports."""

from __future__ import annotations

import ipaddress
from typing import Literal

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
    # Two limits on every API request, each a leaky bucket answered 429 past
    # rate + burst: one per client address (anonymous floods, invalid keys)
    # and one per API key (a tenant's fair share). An address may front many
    # clients (an office NAT, a load balancer not listed in trusted_proxies),
    # so its limit is the looser one.
    api_rate_per_s: int = Field(50, ge=1, description="per client address; 429 beyond rate + burst")
    api_burst: int = Field(100, ge=0)
    api_key_rate_per_s: int = Field(
        10, ge=1, description="per API key (nginx keys its bucket by a hash of the key); 429 beyond rate + burst"
    )
    api_key_burst: int = Field(20, ge=0)
    upload_rate_per_s: int = Field(5, ge=1, description="per client address, upload endpoint")
    upload_burst: int = Field(20, ge=0)
    upload_key_rate_per_s: int = Field(1, ge=1, description="per API key, upload endpoint")
    upload_key_burst: int = Field(5, ge=0)
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="CIDRs of the load balancers in front of the edge: only from these does nginx take the "
        "client address (real_ip_header); empty = every connection's own address is the client",
    )
    real_ip_header: Literal["X-Forwarded-For", "proxy_protocol"] = Field(
        "X-Forwarded-For",
        description="how trusted_proxies pass the client address: the X-Forwarded-For header, or the PROXY "
        "protocol (then every connection to the published ports must speak it)",
    )
    extra_server_config: str = Field(
        "", description="raw nginx directives for the HTTPS server block; nginx -t checks them at deploy"
    )

    @field_validator("bind_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(item, strict=True)))
            except ValueError as error:
                raise ValueError(f"{item!r} is not a CIDR ({error})") from None
        if any(ipaddress.ip_network(network).prefixlen == 0 for network in networks):
            raise ValueError("trusting every address would let any client choose its own address")
        return tuple(networks)

    @model_validator(mode="after")
    def _proxy_protocol_needs_proxies(self) -> EdgeSettings:
        if self.real_ip_header == "proxy_protocol" and not self.trusted_proxies:
            raise ValueError("real_ip_header proxy_protocol needs trusted_proxies (the load balancers' CIDRs)")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> EdgeSettings:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be set together")
        if self.http_port == self.https_port:
            raise ValueError("http_port and https_port must differ")
        return self
