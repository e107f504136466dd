"""Inventory data reaches the settings model the same way under the pyinfra
CLI (lazy data layers) and through govstack.inventory (plain dicts)."""

import json
import subprocess
import sys
import textwrap

from govstack.inventory import InventoryError, load_inventory
from tests.conftest import REPO_ROOT


def _inventory(tmp_path):
    path = tmp_path / "inv.py"
    path.write_text(textwrap.dedent("""
        web = (
            [("@local", {"govstack": {"edge": {"https_port": 9443}}})],
            {"govstack": {"edge": {"hostname": "docs.example.gov", "https_port": 8443}, "project": "grouped"}},
        )
    """))
    return path


def test_group_and_host_data_merge_under_the_pyinfra_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pyinfra", "--dry", str(_inventory(tmp_path)),
         str(REPO_ROOT / "tests" / "unit" / "deploys" / "print_settings.py")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("SETTINGS "))
    settings = json.loads(line.removeprefix("SETTINGS "))
    assert settings["edge"]["hostname"] == "docs.example.gov"
    assert settings["edge"]["https_port"] == 9443
    assert settings["project"] == "grouped"


def test_load_inventory_gives_the_same_settings(tmp_path):
    [entry] = load_inventory(str(_inventory(tmp_path)))
    assert entry.name == "@local"
    assert "web" in entry.groups
    assert entry.settings.edge.hostname == "docs.example.gov"
    assert entry.settings.edge.https_port == 9443
    assert entry.settings.project == "grouped"


def test_missing_inventory_is_a_clear_error(tmp_path):
    try:
        load_inventory(str(tmp_path / "nope.py"))
    except InventoryError as error:
        assert "does not exist" in str(error)
    else:
        raise AssertionError("no error")


def test_the_test_stack_trusts_a_proxy_range_on_its_data_network():
    """tests/e2e/test_edge_clients.py puts its load-balancer client in the test inventory's trusted
    range on the data network, and skips without one: moving the subnet must move the range too."""
    import ipaddress

    from tests.conftest import TEST_INVENTORY

    [entry] = load_inventory(str(TEST_INVENTORY))
    data = ipaddress.ip_network(entry.settings.network.data_subnet)
    trusted = [ipaddress.ip_network(cidr) for cidr in entry.settings.edge.trusted_proxies]
    assert any(network.version == 4 and network.subnet_of(data) for network in trusted), (data, trusted)
