"""Issue 12 §1: where a deploy takes each secret's value from (govstack/secret_sources.py).

The hosts are the source of truth: a controller with no copies (a fresh CI
runner) adopts the hosts' values; a deploy stops, before changing anything,
when hosts disagree or a secret that data needs is on no host.
"""

from __future__ import annotations

import pytest

from govstack.secret_sources import HostSecrets, SecretConflict, Source, digest, resolve_sources

A, B = digest("a" * 40), digest("b" * 40)
DATA = frozenset({"postgres_password", "postgres_app_password", "restic_password", "s3_access_key"})
APP = frozenset({"postgres_app_password", "s3_access_key", "app_admin_api_key"})


def hosts(data_digests=None, app_digests=None, data_kinds=frozenset(), app2_digests=None):
    found = [HostSecrets("data1", DATA, data_digests or {}, frozenset(data_kinds)),
             HostSecrets("app1", APP, app_digests or {})]
    if app2_digests is not None:
        found.append(HostSecrets("app2", APP, app2_digests))
    return found


def test_a_controller_without_copies_adopts_what_the_hosts_hold():
    inventory = hosts({"postgres_app_password": A, "restic_password": B}, {"postgres_app_password": A},
                      data_kinds={"postgres", "restic"})
    sources = resolve_sources(inventory, controller={}, supplied={},
                              names=["postgres_app_password", "restic_password"])
    assert sources == {"postgres_app_password": Source("host", "data1", A),
                       "restic_password": Source("host", "data1", B)}


def test_the_hosts_win_over_a_stale_controller_copy_and_a_matching_copy_is_read_locally():
    inventory = hosts({"postgres_app_password": A, "s3_access_key": A}, {"postgres_app_password": A})
    sources = resolve_sources(inventory, controller={"postgres_app_password": B, "s3_access_key": A}, supplied={},
                              names=["postgres_app_password", "s3_access_key"])
    assert sources["postgres_app_password"] == Source("host", "data1", A)
    assert sources["s3_access_key"] == Source("controller", None, A)


def test_a_value_only_one_host_holds_is_taken_from_that_host():
    inventory = hosts({}, {"postgres_app_password": A})
    assert resolve_sources(inventory, controller={}, supplied={}, names=["postgres_app_password"]) == {
        "postgres_app_password": Source("host", "app1", A)}


def test_hosts_that_disagree_stop_the_deploy_naming_the_secret_and_the_hosts():
    inventory = hosts({"postgres_app_password": A}, {"postgres_app_password": A}, app2_digests={
        "postgres_app_password": B})
    with pytest.raises(SecretConflict) as error:
        resolve_sources(inventory, controller={"postgres_app_password": A}, supplied={})
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("deploy stopped before changing anything: postgres_app_password differs between hosts")
    assert "data1,app1 vs app2" in message or "app2 vs data1,app1" in message


@pytest.mark.parametrize(("name", "kind"), [("restic_password", "restic"), ("postgres_password", "postgres"),
                                            ("postgres_app_password", "postgres")])
def test_a_secret_that_data_needs_gone_everywhere_stops_the_deploy(name, kind):
    inventory = hosts({}, {}, data_kinds={kind})
    with pytest.raises(SecretConflict, match=rf"{name} is on no host, but data1 holds .*put its value back"):
        resolve_sources(inventory, controller={}, supplied={}, names=[name])
    # The same on a single host (no controller copies at all).
    with pytest.raises(SecretConflict, match=name):
        resolve_sources(inventory[:1], controller=None, supplied={}, names=[name])


def test_a_secret_gone_from_the_hosts_comes_back_from_the_controller_copy():
    inventory = hosts({}, {}, data_kinds={"restic"})
    assert resolve_sources(inventory, controller={"restic_password": B}, supplied={}, names=["restic_password"]) == {
        "restic_password": Source("controller", None, B)}


def test_without_data_or_copies_a_new_value_is_made():
    inventory = hosts({}, {}, data_kinds={"restic"})  # Postgres never initialised
    sources = resolve_sources(inventory, controller={}, supplied={}, names=["postgres_password", "s3_access_key"])
    assert sources == {"postgres_password": Source("new"), "s3_access_key": Source("new")}
    # A secret no data depends on (the owner role's, new in an upgrade) is made even beside data.
    sources = resolve_sources([HostSecrets("one", frozenset({"postgres_owner_password"}), {}, frozenset({"postgres"}))],
                              controller=None, supplied={})
    assert sources == {"postgres_owner_password": Source("new")}


def test_an_inventory_value_of_a_generated_secret_never_silently_replaces_the_hosts():
    inventory = hosts({"restic_password": A}, {}, data_kinds={"restic"})
    with pytest.raises(SecretConflict, match=r"supplies restic_password .* `govstack secret rotate restic_password`"):
        resolve_sources(inventory, controller={}, supplied={"restic_password": B}, names=["restic_password"])
    # The same value, or a host that holds none (a rebuilt host, from the vault), is fine.
    assert resolve_sources(inventory, controller={}, supplied={"restic_password": A}, names=["restic_password"]) == {
        "restic_password": Source("supplied", None, A)}
    assert resolve_sources(hosts({}, {}, data_kinds={"restic"}), controller={}, supplied={"restic_password": B},
                           names=["restic_password"])["restic_password"].origin == "supplied"


def test_values_only_the_operator_supplies_follow_the_inventory():
    offsite = frozenset({"backup_offsite_access_key"})
    inventory = [HostSecrets("data1", offsite, {"backup_offsite_access_key": A})]
    assert resolve_sources(inventory, controller={}, supplied={"backup_offsite_access_key": B}) == {
        "backup_offsite_access_key": Source("supplied", None, B)}
    assert resolve_sources(inventory, controller={}, supplied={}) == {}


def test_every_problem_is_named_in_one_line():
    inventory = hosts({"postgres_app_password": A}, {"postgres_app_password": B}, data_kinds={"restic"})
    with pytest.raises(SecretConflict) as error:
        resolve_sources(inventory, controller={}, supplied={}, names=["postgres_app_password", "restic_password"])
    assert "postgres_app_password differs" in str(error.value) and "restic_password is on no host" in str(error.value)
    assert "\n" not in str(error.value)


# -- `govstack secret rotate`: what it refuses, before it touches any host -----------------------

@pytest.mark.parametrize(("name", "layer", "reason"), [
    ("no_such_secret", {}, "unknown secret 'no_such_secret'"),
    ("app_admin_api_key", {}, "rotated through its key API"),
    ("grafana_admin_password", {}, "reset-admin-password"),
    ("analytics_actor_key", {}, "every actor a new pseudonym"),
    ("postgres_analytics_password", {"analytics": {"enabled": False}}, "analytics service is disabled"),
    ("backup_offsite_access_key", {}, "supplied by the operator"),
    ("restic_password", {"secrets": {"restic_password": "r" * 64}}, "supplied by the inventory"),
    ("s3_secret_key", {"secrets": {"s3_access_key": "a" * 20}}, "s3_access_key is supplied by the inventory"),
    ("restic_password", {"backup": {"enabled": False}}, "backup service is disabled"),
    ("s3_access_key", {"object_store": {"kind": "external", "endpoint": "s3.example.gov:443"}},
     "external object store"),
])
def test_rotate_refuses_what_it_cannot_rotate_with_one_line(name, layer, reason, tmp_path):
    from click.testing import CliRunner

    from govstack.cli import main

    inventory = tmp_path / "one.py"
    inventory.write_text(f"hosts = [('@local', {{'govstack': {layer!r}}})]\n")
    result = CliRunner().invoke(main, ["secret", "rotate", name, "-i", str(inventory)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("govstack: ") and reason in lines[0], result.output


def test_an_s3_key_rotates_with_its_pair_and_each_kind_has_a_role_or_a_repository():
    from govstack.rotation import postgres_role_of
    from govstack.secrets import SECRET_SPECS, rotated_with
    from govstack.settings import build_settings

    assert rotated_with("s3_secret_key") == rotated_with("s3_access_key") == ("s3_access_key", "s3_secret_key")
    assert rotated_with("restic_password") == ("restic_password",)
    settings = build_settings([{}], environ={})
    roles = {name: postgres_role_of(settings, name) for name, spec in SECRET_SPECS.items()
             if spec.rotation == "postgres-role"}
    assert roles == {"postgres_password": "postgres", "postgres_owner_password": "govstack_owner",
                     "postgres_app_password": "govstack", "postgres_backup_password": "govstack_backup",
                     "postgres_monitor_password": "govstack_monitor",
                     "postgres_analytics_password": "govstack_analytics"}
