"""This machine, as one all-in-one host (edge, app, data and monitoring).

`make up` deploys it. Settings live under the `govstack` key; every key and
its default is listed in the README (generated from govstack/settings/).
Any of them can be overridden for one run with GOVSTACK__SECTION__KEY=value.
"""

local = [
    (
        "@local",
        {
            "govstack": {
                "stack_root": "/opt/govstack",
                "project": "govstack",
                "images": {"lane": "offline"},
                "edge": {"hostname": "localhost"},
            },
        },
    ),
]
