"""The test suite's own all-in-one stack on this machine.

Its own stack root, Compose project names and ports, so it never touches a
stack that `make up` left running (/opt/govstack, project govstack, 80/443).
"""

from govstack.monitoring import TEST_PROFILE
from govstack.settings import ANALYTICS_TEST_PROFILE

test_local = [
    (
        "@local",
        {
            "govstack": {
                "stack_root": "/var/lib/govstack-test",
                "project": "gstest",
                "images": {"lane": "offline"},
                # The last /29 of the data subnet stands for a load balancer:
                # tests/e2e/test_edge_clients.py puts a client there.
                "edge": {"hostname": "localhost", "http_port": 38080, "https_port": 38443,
                         "trusted_proxies": ["10.253.10.248/29"]},
                "healthy_timeout_s": 240,
                "network": {"data_subnet": "10.253.10.0/24"},
                # Short `for:` durations and the test's webhook receiver.
                "monitoring": {**TEST_PROFILE, "query_port": 39090},
                # Less noise and ample budgets for the live analytics tests.
                "analytics": ANALYTICS_TEST_PROFILE,
            },
        },
    ),
]
