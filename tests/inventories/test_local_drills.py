"""The test suite's second all-in-one stack on this machine: the full tier's
drills (every runbook, a crash at each step of a release and of a restore)
run on it while the other e2e modules run on tests/inventories/test_local.py,
so the two halves of the tier overlap (`make test-full`, tests/support/tiers.py).

Its own stack root, Compose project, ports (below the kernel's ephemeral port
range, 32768+) and data subnet, so it never touches the first test stack.
"""

from govstack.monitoring import TEST_PROFILE

test_local_drills = [
    (
        "@local",
        {
            "govstack": {
                "stack_root": "/var/lib/govstack-test-drills",
                "project": "gstestdrills",
                "images": {"lane": "offline"},
                # As in test_local.py: the last /29 stands for a load balancer.
                "edge": {"hostname": "localhost", "http_port": 28080, "https_port": 28443,
                         "trusted_proxies": ["10.253.12.248/29"]},
                "healthy_timeout_s": 240,
                "network": {"data_subnet": "10.253.12.0/24"},
                "monitoring": {**TEST_PROFILE, "query_port": 29190},
            },
        },
    ),
]
