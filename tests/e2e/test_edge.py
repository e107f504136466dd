"""The nginx edge from outside: TLS protocols and ciphers, headers, limits."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests


def s_client(stack, *flags: str) -> subprocess.CompletedProcess:
    s = stack.settings
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{s.edge.https_port}", "-servername", s.edge.hostname,
         "-CAfile", stack.verify, *flags],
        input="", capture_output=True, text=True, timeout=30,
    )


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_are_refused(stack, flag):
    # SECLEVEL=0: make OpenSSL 3 really offer the old protocol, so it is the
    # server that refuses (with a protocol_version alert), not the client.
    result = s_client(stack, flag, "-cipher", "DEFAULT@SECLEVEL=0")
    assert result.returncode != 0
    assert "alert protocol version" in result.stderr, result.stderr[-500:]


@pytest.mark.parametrize(("flag", "protocol"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls_1_2_and_1_3_are_accepted_with_strong_ciphers(stack, flag, protocol):
    result = s_client(stack, flag)
    assert result.returncode == 0, result.stderr[-500:]
    assert f"Protocol  : {protocol}" in result.stdout or f"New, {protocol}" in result.stdout
    assert "Verify return code: 0 (ok)" in result.stdout
    cipher = next(line for line in result.stdout.splitlines() if "Cipher is" in line)
    assert any(good in cipher for good in ("GCM", "CHACHA20")), cipher


def test_weak_cipher_is_refused_on_tls_1_2(stack):
    result = s_client(stack, "-tls1_2", "-cipher", "AES128-SHA")
    assert result.returncode != 0


def test_security_headers(stack):
    response = requests.get(f"{stack.base_url}/health", verify=stack.verify, timeout=10)
    headers = response.headers
    assert headers["Strict-Transport-Security"].startswith(f"max-age={stack.settings.edge.hsts_max_age_s}")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Server"] == "nginx"  # no version


def test_http_redirects_and_health_on_both_ports(stack):
    s = stack.settings
    plain = requests.get(f"http://127.0.0.1:{s.edge.http_port}/documents", allow_redirects=False, timeout=10)
    assert plain.status_code == 301
    assert plain.headers["Location"].startswith(f"https://127.0.0.1:{s.edge.https_port}/")
    assert requests.get(f"http://127.0.0.1:{s.edge.http_port}/health", timeout=10).status_code == 200


def test_burst_beyond_the_api_limit_gets_429_with_json(stack):
    from concurrent.futures import ThreadPoolExecutor

    s = stack.settings.edge
    # Without a key (the app answers 401 at once), over 8 connections: however
    # slow the machine, more than rate + burst within the seconds it takes.
    sessions = [requests.Session() for _ in range(8)]
    seen = []

    def burst(session: requests.Session) -> None:
        for _ in range((3 * (s.api_burst + s.api_rate_per_s) + 30) // len(sessions)):
            if any(response.status_code == 429 for response in seen):
                return
            seen.append(session.get(f"{stack.base_url}/api/v1/collections", verify=stack.verify, timeout=10))

    with ThreadPoolExecutor(len(sessions)) as pool:
        list(pool.map(burst, sessions))
    limited = [response for response in seen if response.status_code == 429]
    assert limited, [response.status_code for response in seen]
    assert limited[0].headers["Content-Type"].startswith("application/json")
    assert limited[0].json()["detail"] == "rate limit exceeded"
    time.sleep(3)  # let the loopback address's bucket refill for the tests after this one


def test_oversized_upload_gets_413_with_json(stack):
    limit = stack.settings.app.max_upload_mb * 1024 * 1024
    response = requests.post(
        f"{stack.base_url}/api/v1/collections/edge/documents",
        headers={"X-API-Key": stack.admin_api_key},
        files={"file": ("big.txt", b"x" * (limit + 1024))},
        verify=stack.verify,
        timeout=60,
    )
    assert response.status_code == 413
    assert response.json()["detail"] == f"request body larger than {stack.settings.app.max_upload_mb} MB"
