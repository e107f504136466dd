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
        for pool in _DOCKER_DEFAULT_POOLS:
            if network.overlaps(pool):
                # Measured: with a few stacks on one engine, Docker hands
                # 172.29.0.0/16 to an unnamed network and the next deploy
                # fails with "Pool overlaps with other one on this address space".
                raise ValueError(
                    f"{network} overlaps Docker's default address pool {pool}, which the engine hands to "
                    "other networks; choose a subnet outside 172.17.0.0/16-172.31.0.0/16 and 192.168.0.0/16"
                )
        return str(network)


_DOCKER_DEFAULT_POOLS = tuple(ipaddress.ip_network(f"172.{n}.0.0/16") for n in range(17, 32)) + (
    ipaddress.ip_network("192.168.0.0/16"),
)
