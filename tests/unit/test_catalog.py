"""The service catalog is the one place per service: a record alone (and its
image directory) gives a service its compose block, its image build, its data
directory, its Prometheus job, its published ports and its firewall openings.

This is the recipe of docs/architecture.md, *Add a service*, run on a record
that exists only in this test.
"""

from __future__ import annotations

import pytest
import yaml

from govstack import catalog
from govstack.catalog import SERVICES, Healthcheck, Metrics, Service
from govstack.images import IMAGE_TEMPLATES, versioned
from govstack.monitoring.render import render_prometheus_config, scrape_jobs
from govstack.plan import StackPlan
from govstack.render import render_compose, service_template
from govstack.settings import SERVICE_UID, Resources, build_settings
from govstack.tuning import HostResources
from tests.unit.test_roles import split_plans

EXAMPLE = Service(
    "example", "data", "data", SERVICE_UID, {"": 7000},
    offline=lambda s: versioned("example", "example", "2.1", IMAGE_TEMPLATES / "example", "EXAMPLE_VERSION"),
    upstream="example/example:2.1",
    data_dir=True, init=True,
    published="", clients=("app",), probed=False,
    metrics=Metrics(7001, job="example", component="example-store", published=True),
    healthcheck=Healthcheck(("CMD", "example", "ping"), interval="5s", retries=3),
)
LIMITS = Resources(memory_mb=96, cpus=0.5, pids=64)


@pytest.fixture
def example(monkeypatch):
    monkeypatch.setitem(SERVICES, "example", EXAMPLE)
    return EXAMPLE


def with_limits(plan: StackPlan) -> StackPlan:
    """Its limits are a setting (resources.example); a real service adds them to default_resources."""
    settings = plan.settings.model_copy(update={"resources": {**plan.settings.resources, "example": LIMITS}})
    return StackPlan(settings, plan.host, roles=plan.roles, topology=plan.topology, address=plan.address)


def test_a_record_alone_gives_a_single_host_its_compose_block_image_and_data_dir(example):
    plan = with_limits(StackPlan(build_settings([{"stack_root": "/srv/gs"}], environ={}),
                                 HostResources(8192, 2, None)))
    assert "example" in plan.services
    assert service_template(example) == "compose/services/default.yml.j2"
    block = yaml.safe_load(render_compose(plan))["services"]["example"]
    assert block["image"] == "govstack/example:2.1"
    assert block["user"] == f"{SERVICE_UID}:{SERVICE_UID}"
    assert block["healthcheck"] == {"test": ["CMD", "example", "ping"], "interval": "5s", "timeout": "5s",
                                    "retries": 3}
    assert block["deploy"]["resources"]["limits"] == {"memory": "96m", "cpus": "0.5", "pids": 64}
    assert block["init"] is True and block["cap_drop"] == ["ALL"] and block["read_only"] is True
    assert block["volumes"] == ["/srv/gs/data/example:/data"]
    assert block["networks"] == ["data"] and "ports" not in block
    assert plan.data_dirs["example"] == SERVICE_UID

    build = next(image for image in catalog.offline_builds(plan.settings) if image.service == "example")
    assert build.tag == "govstack/example:2.1" and build.build_args == {"EXAMPLE_VERSION": "2.1"}
    assert "govstack/example:2.1" in plan.host_images
    upstream = StackPlan(build_settings([{"images": {"lane": "upstream"}}], environ={}), plan.host)
    assert upstream.image("example") == "example/example:2.1"
    assert "example" not in [image.service for image in catalog.offline_builds(upstream.settings)]

    jobs = scrape_jobs(plan)
    assert jobs["example"].groups == [{"targets": ["example:7001"], "labels": {"component": "example-store"}}]
    prometheus = yaml.safe_load(render_prometheus_config(plan))
    job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "example")
    assert job["static_configs"] == [{"targets": ["example:7001"], "labels": {"component": "example-store"}}]


def test_a_record_alone_publishes_and_firewalls_it_in_a_split_inventory(example):
    plans = {name: with_limits(plan) for name, plan in split_plans().items()}
    data, edge = plans["data1"], plans["edge1"]
    assert "example" in data.services and "example" not in edge.services
    assert data.published_data_ports["example"] == 7000
    block = yaml.safe_load(render_compose(data))["services"]["example"]
    assert block["ports"] == ["10.0.0.31:7000:7000", "10.0.0.31:7001:7001"]
    assert block["networks"] == ["data", "edge"]
    openings = dict(data.firewall_openings)
    assert openings[7000] == ["10.0.0.21", "10.0.0.22"]  # its clients: the app hosts
    assert openings[7001] == ["10.0.0.10"]  # its metrics: the monitoring host
    # Prometheus on the monitoring host scrapes it on the data host's private address.
    assert scrape_jobs(edge)["example"].groups == [
        {"targets": ["10.0.0.31:7001"], "labels": {"component": "example-store", "host": "data1"}}]


def test_every_record_is_consistent():
    settings = build_settings([], environ={})
    for svc in SERVICES.values():
        assert svc.tier in (*catalog.TIERS, "app"), svc.name
        assert svc.resources_key in settings.resources, f"{svc.name}: no resources.{svc.resources_key} limits"
        if svc.published is not None:
            assert svc.published in svc.ports and svc.clients, svc.name
        for probe in svc.probes:
            assert probe.port in svc.ports, (svc.name, probe.job)
    jobs = [svc.metrics.job for svc in SERVICES.values() if svc.metrics and svc.metrics.job]
    jobs += [probe.job for svc in SERVICES.values() for probe in svc.probes]
    assert len(jobs) == len(set(jobs)), "two records name the same scrape job"
