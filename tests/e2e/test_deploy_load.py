"""`ndctl deploy` under load on a real test host: 20 consecutive blue-green deploys, 0 failed requests.

The load generator (``ndctl.sandbox.loadgen``) runs INSIDE the test host against
its proxy (127.0.0.1:80) for the whole test, with keep-alive connections; a
request retried once on a stale keep-alive connection is counted apart and is
not a failure. Latencies are printed, never asserted (speed belongs in
``benchmarks/deploy.py``).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import time

import pytest

from ndctl import sandbox
from ndctl.sandbox import caddyimage
from ndctl.sandbox.loadgen import LoadGen

from .conftest import reset_host

pytestmark = pytest.mark.e2e

APP = "ndtload"
DEPLOYS = 20
IMAGES = {"v1": "ndt-load:v1", "v2": "ndt-load:v2"}
BODIES = {v: f"hello {v}" for v in IMAGES}


def serve(host) -> str:
    r = host.exec("python3", "-c", "import urllib.request;"
                  "print(urllib.request.urlopen('http://127.0.0.1:80/', timeout=5).read().decode().strip())",
                  check=False)
    return r.stdout.strip() if r.returncode == 0 else f"ERROR {r.stderr.strip()[-200:]}"


@pytest.fixture
def load_env(cli, container_hosts, ssh_block, tmp_path):
    host = container_hosts[0]
    cli.ssh_config.write_text(ssh_block("load-0", host))
    r = cli("agent", "register", "--name", "load-0", "--tags", "deployload", "--trust-host-key")
    assert r.returncode == 0, r.stderr
    proxy_ref = caddyimage.build_caddy_image()
    caddyimage.load_into(host, proxy_ref)
    for v, ref in IMAGES.items():
        sandbox.build_web_image(ref, BODIES[v])
    spec = tmp_path / "nextdeploy.yaml"
    # stop_timeout 1s: busybox httpd as PID 1 ignores SIGTERM, so every stop waits for it.
    spec.write_text(f"""
app: {APP}
image: {IMAGES['v1']}
port: 8080
tags: deployload
health_check: {{path: /health, interval: 0.3s, successes: 2, failures: 3, deadline: 20s}}
proxy: {{kind: caddy, hosts: [], image: {proxy_ref}}}
drain: 2s
grace: 2s
stop_timeout: 1s
retain: 2
""")
    try:
        yield cli, host, spec
    finally:
        # Leave the shared host as we found it (the proxy image stays: it is a cache).
        reset_host(host, APP, shlex.join(["docker", "rmi", "-f", IMAGES["v1"], IMAGES["v2"]]))
        subprocess.run(["docker", "rmi", "-f", *IMAGES.values()], capture_output=True)


def test_twenty_blue_green_deploys_under_load_drop_no_request(load_env) -> None:
    cli, host, spec = load_env
    f = ["-f", str(spec)]
    r = cli("deploy", *f, "--version", "v1-00", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert serve(host) == BODIES["v1"]

    gen = LoadGen(host, expected=BODIES.values(), threads=4, think=0.005)
    took: list[float] = []
    try:
        gen.start()
        time.sleep(1.0)
        for i in range(1, DEPLOYS + 1):
            v = "v2" if i % 2 else "v1"
            t0 = time.monotonic()
            r = cli("deploy", *f, "--image", IMAGES[v], "--version", f"{v}-{i:02d}", timeout=600)
            took.append(time.monotonic() - t0)
            assert r.returncode == 0, f"deploy {i} ({v}): {r.stdout}{r.stderr}"
        time.sleep(0.5)
        stats = gen.stop()
    finally:
        gen.kill()
    took.sort()
    print(f"\n{DEPLOYS} blue-green deploys under load: {stats['requests']} requests, {stats['failed']} failed, "
          f"{stats['stale_retries']} stale-connection retries, p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, "
          f"max {stats['max_ms']} ms; deploy wall p50 {took[len(took) // 2]:.2f}s max {took[-1]:.2f}s\n"
          f"{json.dumps(stats, sort_keys=True)}")
    assert stats["failed"] == 0, stats
    assert stats["versions"].get(BODIES["v1"], 0) > 0 and stats["versions"].get(BODIES["v2"], 0) > 0, stats
    assert stats["requests"] > 100, stats
    assert serve(host) == BODIES["v1"]  # an even number of deploys ends on v1
    st = json.loads(cli("deploy", "status", APP, *f, "-o", "json").stdout)
    assert {s["serving"]["version"] for s in st.values()} == {f"v1-{DEPLOYS:02d}"}
