"""The staging site: production's shape on two hosts (an example: copy and edit).

.github/workflows/deploy.yml deploys every push to main here, before a tagged
release goes to production (inventories/production.py, which documents the
groups, the addresses and the secrets). Staging keeps the split (edge and app
on one host, data and monitoring on another), so a deploy that only works
all-in-one fails here first, with its own secrets and its own runner
(labels self-hosted, linux, govstack-staging).

    govstack up -i inventories/staging.py
    govstack runbook show restore-postgres -i inventories/staging.py
"""

# Keys from the SSH agent, host keys from ~/.ssh/known_hosts (see inventories/production.py).
_ssh = {"ssh_user": "root", "ssh_strict_host_key_checking": "yes"}

all = (
    [
        ("stage-front1", {**_ssh, "ssh_hostname": "10.30.0.10"}),
        ("stage-data1", {**_ssh, "ssh_hostname": "10.30.0.31"}),
    ],
    {
        "govstack": {
            "stack_root": "/opt/govstack",
            "project": "govstack",
            "images": {"lane": "offline", "ship_from_controller": True},
            "edge": {"hostname": "docs-staging.example.gov"},
            "shared_secrets_dir": "/etc/govstack/secrets/staging",
            "runbooks": {"escalation": [
                {"role": "on-call", "name": "platform on-call rota", "reach": "pager +1 555 0100 (office hours)"},
                {"role": "service owner", "name": "head of digital records", "reach": "+1 555 0102"},
            ]},
        },
    },
)

edge = ["stage-front1"]
app = ["stage-front1"]
data = ["stage-data1"]
monitoring = ["stage-data1"]
