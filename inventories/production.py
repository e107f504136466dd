"""A production site split over several hosts (an example: copy and edit).

    govstack up -i inventories/production.py
    govstack deploy --version 1.4.0 -i inventories/production.py
    govstack check -i inventories/production.py

Deployed by .github/workflows/deploy.yml on a tag, after staging
(inventories/staging.py) and a reviewer's approval, from a self-hosted runner
inside the site's network (the addresses below are private).

Groups say what each host runs (govstack/roles.py); any group may share a
host, and a host in none of them runs everything (like inventories/local.py):

- ``edge``: nginx and TLS, the only public ports (80/443). Its upstream lists
  every ``app`` host of the serving color; a dead app host is skipped
  (passive health checks) and costs no failed requests.
- ``app``: the app colors (API + indexing worker), each color's API
  published on the host's private address (blue 8001, green 8002) for the
  edge hosts only. `govstack deploy` starts the new color on every app host,
  waits until all are ready, then switches the edge once; a failing host
  stops the rollout before the switch.
- ``data``: Postgres, SeaweedFS (S3 gateway) and Chroma, published on the
  data host's private address only (5432, 8333, 8000). The first data host
  runs them; docs/multihost.md shows how SeaweedFS volume servers on more
  data hosts grow object storage.
- ``monitoring``: Prometheus, Alertmanager and the exporters.

Hosts reach each other by private address: ``govstack.address`` in host data,
else ``ssh_hostname`` (both must be IP addresses, ports are bound to them).
Keep that network private: the data ports carry no TLS.

Secrets: the hosts are the source of truth. The controller (the machine
running govstack) keeps copies in ``shared_secrets_dir`` (mode 0700, files
0600): a controller without them (a fresh CI runner) adopts the hosts'
values, a host without one gets the others' (or the controller's), and a
deploy never changes a value a host holds (``govstack secret rotate`` does,
on purpose). Keep the restic password in a vault as well.

Images (offline lane): with ``images.ship_from_controller`` they are built
once on the controller (deploys/build_images.py) and each host gets the ones
its groups run with `docker save | docker load` over SSH, only when the image
id differs (govstack/shipping.py): no host needs a mirror or internet access.
Without it, each host builds its own.

Settings layers: ``all`` (second element of the tuple) <- group data <- host
data <- GOVSTACK__* environment. Every key is in the README.
"""

# Keys come from the SSH agent (the operator's, or the CI runner's: .github/workflows/deploy.yml
# loads the DEPLOY_SSH_KEY secret into one) and host keys from ~/.ssh/known_hosts, so no key file
# path ties the inventory to one machine. Strict host key checking: a host whose key is not
# known is refused, never trusted on first use.
_ssh = {"ssh_user": "root", "ssh_strict_host_key_checking": "yes"}

all = (
    [
        ("edge1", {**_ssh, "ssh_hostname": "10.20.0.10"}),
        ("app1", {**_ssh, "ssh_hostname": "10.20.0.21"}),
        ("app2", {**_ssh, "ssh_hostname": "10.20.0.22"}),
        # SSH through a public name, other hosts over the private network.
        ("data1", {**_ssh, "ssh_hostname": "data1.ops.example.gov", "govstack": {"address": "10.20.0.31"}}),
    ],
    {
        "govstack": {
            "stack_root": "/opt/govstack",
            "project": "govstack",
            "images": {"lane": "offline", "ship_from_controller": True},
            "edge": {"hostname": "docs.example.gov"},
            # The controller's copies of the hosts' secrets (adopted from the hosts when missing).
            "shared_secrets_dir": "/etc/govstack/secrets/production",
            # Rendered into every runbook (`govstack runbook show NAME -i inventories/production.py`).
            "runbooks": {"escalation": [
                {"role": "on-call", "name": "platform on-call rota", "reach": "pager +1 555 0100 (24/7)"},
                {"role": "incident lead", "name": "platform team lead", "reach": "+1 555 0101, #incidents"},
                {"role": "service owner", "name": "head of digital records", "reach": "+1 555 0102 (office hours)"},
            ]},
        },
    },
)

# Behind the site's load balancers: nginx takes the client address from their
# X-Forwarded-For only, so the per-address limit sees each client.
edge = (["edge1"], {"govstack": {"edge": {"api_key_rate_per_s": 20, "api_key_burst": 40,
                                          "trusted_proxies": ["10.0.1.0/28"]}}})
app = ["app1", "app2"]
data = (["data1"], {"govstack": {"postgres": {"memory_share": 0.4, "storage": "ssd"}}})
# Monitoring shares the edge host (nginx-exporter then reads the local nginx).
monitoring = ["edge1"]
