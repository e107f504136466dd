"""Parsing of the raw command output our facts read from hosts."""

from govstack.facts import (
    CertificateState,
    ComposeProject,
    DockerAppArmor,
    HostResourcesFact,
    ImageIds,
    ImageLabel,
    ImageLabels,
    PathState,
    SecretFile,
)


def test_apparmor_is_what_the_engine_reports():
    assert DockerAppArmor().process(['["name=apparmor","name=seccomp,profile=builtin","name=cgroupns"]']) is True
    assert DockerAppArmor().process(['["name=seccomp,profile=default"]']) is False
    # No engine answering, or an answer that is not JSON: no AppArmor claimed.
    assert DockerAppArmor().process(["[]"]) is False
    assert DockerAppArmor().process(["null"]) is False
    assert DockerAppArmor().process(["Cannot connect to the Docker daemon"]) is False


def test_host_resources_cgroup_v1_unlimited_and_v2_limit():
    v1 = HostResourcesFact().process(["2", "24000000", "9223372036854771712"])
    assert (v1.cpus, v1.memory_mb, v1.cgroup_memory_limit_mb) == (2, 23437, None)
    v2 = HostResourcesFact().process(["4", "24000000", str(4 * 2**30)])
    assert v2.cgroup_memory_limit_mb == 4096
    unlimited = HostResourcesFact().process(["4", "24000000", "max"])
    assert unlimited.cgroup_memory_limit_mb is None


def test_compose_project_state():
    output = [
        "#desired",
        "postgres abc",
        "nginx def",
        "#containers",
        "postgres\trunning\thealthy\tabc\tgovstack/postgres:15\tid1\tsha256:i1",
        "nginx\texited\t\tdef\tgovstack/nginx:1.22\tid2\tsha256:i2",
        "api\trunning\tstarting\t<no value>\tgovstack/app:v1\tid3\tsha256:i3",
    ]
    state = ComposeProject().process(output)
    assert state["desired"] == {"postgres": "abc", "nginx": "def"}
    assert state["containers"][0] == {
        "service": "postgres", "state": "running", "health": "healthy", "config_hash": "abc",
        "image": "govstack/postgres:15", "id": "id1", "image_id": "sha256:i1",
    }
    assert state["containers"][1]["health"] is None
    assert (state["containers"][2]["health"], state["containers"][2]["config_hash"]) == ("health: starting", "")
    assert ComposeProject().process(["#desired", "__invalid__", "#containers"])["desired"] is None


def test_image_ids_of_many_images_in_one_answer():
    ids = ImageIds().process(['sha256:a\t["govstack/app:v1","postgres:15"]\t[]\n',
                              'sha256:b\t[]\t["nginx@sha256:fff"]\n', "Error: No such image: gone:1\n"])
    assert ids["govstack/app:v1"] == "sha256:a"
    assert ids["docker.io/library/postgres:15"] == ids.get("postgres:15") == "sha256:a"
    assert ids["nginx@sha256:fff"] == "sha256:b"
    assert ids["gone:1"] is None and ids.get("govstack/app:v2") is None
    assert ImageIds().command(()) == "true"


def test_image_label_absent_unset_and_set():
    assert ImageLabel().process(["__absent__"]) is None
    assert ImageLabel().process(["<no value>"]) == ""
    assert ImageLabel().process(["abc123"]) == "abc123"


def test_image_labels_of_many_images_in_one_answer():
    answer = ['["govstack/app:v1","govstack/app:v2"]\tabc\n', '["govstack/nginx:x"]\t<no value>\n',
              '[]\tdangling\n', "Error: No such image: govstack/gone:1\n"]
    labels = ImageLabels().process(answer)
    assert labels == {"govstack/app:v1": "abc", "govstack/app:v2": "abc", "govstack/nginx:x": ""}
    assert labels.get("govstack/gone:1") is None
    assert ImageLabels().command((), "l") == "true"


def test_path_and_secret_state():
    assert PathState().process(["__absent__"]) is None
    assert PathState().process(["directory|999|999|700"]) == {"type": "directory", "uid": 999, "gid": 999,
                                                              "mode": "700"}
    assert SecretFile().process(["600 10001", "ab" * 32]) == {"mode": "600", "uid": 10001, "sha256": "ab" * 32}


def test_certificate_state():
    state = CertificateState().process(["valid", "DNS:localhost, IP Address:127.0.0.1"])
    assert state == {"valid": True, "sans": ["DNS:localhost", "IP Address:127.0.0.1"]}
    assert CertificateState().process(["__absent__"]) is None
