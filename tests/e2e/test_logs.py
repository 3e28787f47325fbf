"""`ndctl logs APP -f` on real test hosts: merged, prefixed, and following across a switch."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from ndctl import sandbox
from ndctl.commands import docker
from ndctl.core.errors import ExitStatus

pytestmark = pytest.mark.e2e

APP = "ndtlogs"


def start_app(host, deploy_id: str, version: str, word: str) -> str:
    name = docker.container_name(APP, deploy_id)
    labels = docker.app_labels(APP, version, deploy_id, 8080)
    argv = ["docker", "run", "-d", "--name", name]
    for k, v in labels.items():
        argv += ["--label", f"{k}={v}"]
    ref = sandbox.import_busybox(host)
    host.exec(*argv, ref, "/bin/busybox", "sh", "-c", f"while :; do echo {word}; /bin/busybox sleep 0.3; done")
    return name


def test_logs_merge_hosts_and_follow_across_a_switch(cli, container_hosts, ssh_block) -> None:
    a, b = container_hosts[0], container_hosts[1]
    cli.ssh_config.write_text(ssh_block("log-a", a) + ssh_block("log-b", b))
    for n in ("log-a", "log-b"):
        assert cli("agent", "register", "--name", n, "--tags", "logs", "--trust-host-key").returncode == 0
    made: list[tuple] = []
    try:
        made += [(a, start_app(a, "0000000a", "v1", "blue-a")), (b, start_app(b, "0000000b", "v1", "blue-b"))]
        r = cli("logs", APP, "--tail", "2", "--tags", "logs")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert any(ln.startswith("log-a v1 | blue-a") for ln in lines)
        assert any(ln.startswith("log-b v1 | blue-b") for ln in lines)
        # -o json: one object per line, both hosts merged by Docker's timestamps
        r = cli("logs", APP, "--tail", "5", "--tags", "logs", "-o", "json")
        assert r.returncode == 0, r.stderr
        docs = [json.loads(x) for x in r.stdout.splitlines()]
        per_host = {h: sum(1 for d in docs if d["host"] == h) for h in ("log-a", "log-b")}
        assert all(2 <= n <= 5 for n in per_host.values()) and len(docs) == sum(per_host.values()), per_host
        assert [d["time"] for d in docs] == sorted(d["time"] for d in docs) and all(d["time"] for d in docs)
        assert {d["line"] for d in docs} == {"blue-a", "blue-b"}
        # an app with no running container anywhere: said, and exit 5
        r = cli("logs", "ndtnothing", "--tags", "logs")
        assert r.returncode == ExitStatus.NOT_FOUND and "no running container of app 'ndtnothing'" in r.stderr

        follower = subprocess.Popen([sys.executable, "-m", "ndctl", "logs", APP, "-f", "--tags", "name:log-a"],
                                    env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(3)
            # a deploy switch: green starts, blue stops
            made.append((a, start_app(a, "0000000c", "v2", "green-a")))
            time.sleep(1)
            a.exec("docker", "stop", "-t", "1", docker.container_name(APP, "0000000a"))
            time.sleep(4)
        finally:
            follower.terminate()
            out, err = follower.communicate(timeout=30)
        assert "log-a v1 | blue-a" in out, err
        assert "log-a v2 | green-a" in out, err  # picked up without restarting `ndctl logs`
        assert "log-b" not in out
        r = cli("logs", "Bad_Name")
        assert r.returncode == ExitStatus.USAGE and "invalid app name" in r.stderr
    finally:
        for host, name in made:
            host.exec("docker", "rm", "-f", name, check=False)
