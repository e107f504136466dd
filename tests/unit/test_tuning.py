import pytest

from govstack.tuning import HostResources, postgres_memory_budget_mb, postgres_tuning, size_to_kb


def test_seed_rules_for_a_4gb_budget():
    conf = postgres_tuning(memory_mb=4096, cpus=4, max_connections=100)
    assert conf["shared_buffers"] == "1048576kB"  # 25 %
    assert conf["effective_cache_size"] == "3145728kB"  # 75 %
    assert conf["maintenance_work_mem"] == "262144kB"  # 1/16
    # (4 GiB - 1 GiB) / (100 connections * 3) / 2 workers per gather
    assert conf["work_mem"] == f"{(4096 - 1024) * 1024 // 300 // 2}kB"
    assert conf["wal_buffers"] == "16384kB"  # capped at one WAL segment
    assert conf["random_page_cost"] == "1.1"
    assert conf["max_parallel_workers"] == "4"
    assert conf["max_parallel_workers_per_gather"] == "2"


def test_small_budget_keeps_floors_and_caps():
    conf = postgres_tuning(memory_mb=512, cpus=1, max_connections=500)
    assert conf["work_mem"] == "4096kB"  # never below 4 MB
    assert conf["max_parallel_workers_per_gather"] == "1"
    assert conf["max_worker_processes"] == "8"


def test_maintenance_work_mem_is_capped_at_2gb():
    conf = postgres_tuning(memory_mb=128 * 1024, cpus=32, max_connections=100)
    assert conf["maintenance_work_mem"] == f"{2 * 1024 * 1024}kB"


def test_hdd_and_overrides():
    conf = postgres_tuning(memory_mb=2048, cpus=2, max_connections=100, storage="hdd", overrides={"work_mem": "64MB"})
    assert conf["random_page_cost"] == "4"
    assert conf["work_mem"] == "64MB"


def test_budget_is_the_tightest_limit():
    host = HostResources(memory_mb=24000, cpus=2)
    assert postgres_memory_budget_mb(host, None) == 24000
    assert postgres_memory_budget_mb(host, 6000) == 6000
    boxed = HostResources(memory_mb=24000, cpus=2, cgroup_memory_limit_mb=3000)
    assert postgres_memory_budget_mb(boxed, 6000) == 3000


def test_too_little_memory_is_refused():
    with pytest.raises(ValueError, match="at least 256 MB"):
        postgres_tuning(memory_mb=128, cpus=1, max_connections=10)


@pytest.mark.parametrize(("text", "kb"), [("64kB", 64), ("512MB", 524288), ("6GB", 6291456)])
def test_size_to_kb(text, kb):
    assert size_to_kb(text) == kb
