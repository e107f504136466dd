"""The benchmarks' own stack on this machine (own root, project and ports)."""

bench_local = [
    (
        "@local",
        {
            "govstack": {
                "stack_root": "/var/lib/govstack-bench",
                "project": "gsbench",
                "edge": {"hostname": "localhost", "http_port": 48080, "https_port": 48443},
                "network": {"data_subnet": "10.253.20.0/24"},
                "monitoring": {"query_port": 49090},
            },
        },
    ),
]
