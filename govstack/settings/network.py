"""``govstack.network``: the stack's internal Docker network."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from govstack.settings.base import Section


class NetworkSettings(Section):
    # Fixed, so the app can trust X-Forwarded-* from exactly this network (the
    # edge reaches the app over it). Outside Docker's default address pools
    # (172.17-31/16, 192.168/16), so an auto-assigned network never overlaps
    # it. Two stacks on one host need two subnets.
    data_subnet: str = Field("10.253.0.0/24", description="internal network of data services, app and edge")

    @field_validator("data_subnet")
    @classmethod
    def _cidr(cls, value: str) -> str:
        network = ipaddress.ip_network(value)
        if network.version != 4 or network.num_addresses < 16:
            raise ValueError("must be an IPv4 network of at least 16 addresses")
        return str(network)
