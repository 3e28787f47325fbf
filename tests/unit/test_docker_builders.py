"""Docker argv builders: exact argv, values never spliced into shell syntax."""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from ndctl.commands import docker
from ndctl.core.appspec import parse_appspec

NASTY = "it's \"x\"; $(rm -rf /) `id` \n second line"


def test_container_name_and_labels() -> None:
    assert docker.container_name("web", "0a1b2c3d") == "nd-web-0a1b2c3d"
    assert docker.app_labels("web", "v2", "0a1b2c3d", 8080) == {
        "com.nextdeploy.app": "web", "com.nextdeploy.version": "v2", "com.nextdeploy.deploy-id": "0a1b2c3d",
        "com.nextdeploy.role": "app", "com.nextdeploy.port": "8080"}


@pytest.mark.parametrize("deploy_id", ["", "0A1B2C3D", "0a1b2c3", "0a1b2c3d4", "../../x", "-rf"])
def test_container_name_rejects_bad_ids(deploy_id: str) -> None:
    with pytest.raises(ValueError):
        docker.container_name("web", deploy_id)


def test_run_app_exact_argv() -> None:
    spec = parse_appspec(
        "app: web\nimage: ndt-busybox:1\nport: 8080\n"
        "command: /bin/busybox httpd -f -p 8080 -h /www\n"
        "env:\n  GREETING: hello world\n  N: 3\n"
        "volumes: [data:/www, certs:/certs:ro]\nstop_timeout: 15\n")
    assert docker.run_app(spec, version="v1", deploy_id="0a1b2c3d") == [
        "docker", "run", "-d", "--name", "nd-web-0a1b2c3d", "--network", "nextdeploy",
        "--restart", "unless-stopped", "--stop-timeout", "15",
        "--label", "com.nextdeploy.app=web", "--label", "com.nextdeploy.version=v1",
        "--label", "com.nextdeploy.deploy-id=0a1b2c3d", "--label", "com.nextdeploy.role=app",
        "--label", "com.nextdeploy.port=8080",
        "-e", "GREETING=hello world", "-e", "N=3",
        "-v", "data:/www", "-v", "certs:/certs:ro",
        "ndt-busybox:1", "/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www",
    ]


def test_run_app_with_a_retained_image_and_port() -> None:
    spec = parse_appspec("app: web\nimage: web:3\nport: 80\n")
    argv = docker.run_app(spec, version="v1", deploy_id="ffffffff", image="sha256:" + "e" * 64, port=81)
    assert argv[-1] == "sha256:" + "e" * 64
    assert "com.nextdeploy.port=81" in argv and "com.nextdeploy.version=v1" in argv


def test_env_values_are_single_words_whatever_they_contain() -> None:
    argv = docker.run_container("c1", "img:1", env=[("X", NASTY)], network=None, restart=None)
    assert argv == ["docker", "run", "-d", "--name", "c1", "-e", f"X={NASTY}", "img:1"]
    # what the transport sends, split back by a shell, is the same argv
    assert shlex.split(shlex.join(argv)) == argv


def test_run_container_accessory_and_one_off() -> None:
    assert docker.run_container(
        "nd-postgres", "postgres:16", labels={"com.nextdeploy.role": "accessory"},
        volumes=["db-data:/var/lib/postgresql"], publish=["127.0.0.1:5432:5432"]) == [
        "docker", "run", "-d", "--name", "nd-postgres", "--network", "nextdeploy", "--restart", "unless-stopped",
        "--label", "com.nextdeploy.role=accessory", "-v", "db-data:/var/lib/postgresql",
        "-p", "127.0.0.1:5432:5432", "postgres:16"]
    assert docker.run_container("once", "busybox:1", command=["echo", "hi"], detach=False, remove=True,
                                interactive=True, restart=None, network=None) == [
        "docker", "run", "-i", "--rm", "--name", "once", "busybox:1", "echo", "hi"]


@pytest.mark.parametrize("kw", [
    {"name": "-d"}, {"name": "a b"}, {"image": "--privileged"}, {"image": ""},
    {"env": [("A B", "x")]}, {"env": [("A=B", "x")]}, {"labels": {"--x": "y"}},
    {"volumes": ["--privileged"]}, {"volumes": ["novolume"]}, {"restart": "sometimes"},
    {"publish": ["80;id"]}, {"network": "--host"},
])
def test_run_container_rejects_option_like_values(kw: dict) -> None:
    args = {"name": "c1", "image": "img:1", **kw}
    with pytest.raises(ValueError):
        docker.run_container(args.pop("name"), args.pop("image"), **args)


def test_lifecycle_argv() -> None:
    assert docker.start("nd-web-0a1b2c3d") == ["docker", "start", "nd-web-0a1b2c3d"]
    assert docker.stop("a", "b", timeout=10) == ["docker", "stop", "-t", "10", "a", "b"]
    assert docker.stop("a", timeout=2.1) == ["docker", "stop", "-t", "3", "a"]  # rounded up, never shortened
    assert docker.rm("a", "b") == ["docker", "rm", "a", "b"]
    assert docker.rm("a", force=True) == ["docker", "rm", "-f", "a"]
    with pytest.raises(ValueError):
        docker.rm("-f")


def test_inspect_and_ps_formats() -> None:
    assert docker.inspect_containers("a", "b") == [
        "docker", "container", "inspect", "--format", docker.INSPECT_FORMAT, "a", "b"]
    assert docker.ps(app="web", role="app") == [
        "docker", "ps", "--no-trunc", "--all", "--filter", "label=com.nextdeploy.app=web",
        "--filter", "label=com.nextdeploy.role=app", "--format", docker.PS_FORMAT]
    assert docker.ps(all=False) == [
        "docker", "ps", "--no-trunc", "--filter", "label=com.nextdeploy.role", "--format", docker.PS_FORMAT]
    assert docker.ps(labels={"com.nextdeploy.deploy-id": "0a1b2c3d"})[4:6] == [
        "--filter", "label=com.nextdeploy.deploy-id=0a1b2c3d"]


def _render(fmt: str, fields: dict) -> str:
    """Substitute `{{json X}}` the way docker does, to check the format is a JSON object template."""
    import re

    def sub(m: re.Match) -> str:
        return json.dumps(fields[m.group(1)])
    return re.sub(r"\{\{json \(?([^}]*?)\)?\}\}", sub, fmt)


def test_formats_render_to_json_objects() -> None:
    ins = _render(docker.INSPECT_FORMAT, {
        ".Id": "abc", ".Name": "/nd-web-0a1b2c3d", ".Config.Image": "web:1", ".Image": "sha256:1",
        ".Created": "2026-01-01T00:00:00.1Z", ".State.Status": "running", ".State.Running": True,
        ".State.ExitCode": 0, ".State.StartedAt": "x", ".State.FinishedAt": "y", ".RestartCount": 0,
        ".Config.Labels": {"com.nextdeploy.app": "web"}, ".NetworkSettings.Networks": {}})
    obj = json.loads(ins)
    assert obj["name"] == "/nd-web-0a1b2c3d" and obj["labels"] == {"com.nextdeploy.app": "web"}
    ps = _render(docker.PS_FORMAT, {
        ".ID": "abc", ".Names": "n", ".Image": "i", ".State": "running", ".Status": "Up", ".CreatedAt": "t",
        '.Label "com.nextdeploy.app"': "web", '.Label "com.nextdeploy.version"': "v1",
        '.Label "com.nextdeploy.deploy-id"': "0a1b2c3d", '.Label "com.nextdeploy.role"': "app",
        '.Label "com.nextdeploy.port"': "80"})
    assert json.loads(ps)["deploy_id"] == "0a1b2c3d"
    img = _render(docker.IMAGE_FORMAT, {".Id": "sha256:1", ".RepoTags": ["a:1"], ".RepoDigests": [],
                                        ".Created": "t", ".Size": 5})
    assert json.loads(img)["repo_tags"] == ["a:1"]


def test_image_argv() -> None:
    assert docker.image_id("web:1") == ["docker", "image", "inspect", "--format", "{{.Id}}", "web:1"]
    assert docker.image_inspect("web:1", "sha256:ab") == [
        "docker", "image", "inspect", "--format", docker.IMAGE_FORMAT, "web:1", "sha256:ab"]
    assert docker.pull("ghcr.io/acme/web:1") == ["docker", "pull", "--quiet", "ghcr.io/acme/web:1"]
    assert docker.load() == ["docker", "load", "--quiet"]
    assert docker.save("web:1") == ["docker", "save", "web:1"]
    assert docker.tag("sha256:ab", "web:1") == ["docker", "tag", "sha256:ab", "web:1"]
    with pytest.raises(ValueError):
        docker.pull("--all-tags")


def test_logs_argv() -> None:
    assert docker.logs("c") == ["docker", "logs", "--timestamps", "c"]
    assert docker.logs("c", follow=True, since="10m", tail=100, timestamps=False) == [
        "docker", "logs", "--follow", "--since=10m", "--tail=100", "c"]
    assert docker.logs("c", since="2026-11-27T10:00:00Z", tail="all")[-3:] == [
        "--since=2026-11-27T10:00:00Z", "--tail=all", "c"]
    for bad in ({"since": "-1h"}, {"since": "1h; id"}, {"tail": -1}, {"tail": "some"}, {"tail": True}):
        with pytest.raises(ValueError):
            docker.logs("c", **bad)


def test_exec_argv() -> None:
    assert docker.exec_in("nd-web-0a1b2c3d", ["sh", "-c", "echo $HOME"]) == [
        "docker", "exec", "nd-web-0a1b2c3d", "sh", "-c", "echo $HOME"]
    assert docker.exec_in("c", ["rails", "console"], interactive=True, tty=True, user="app", workdir="/app",
                          env=[("X", "1")]) == [
        "docker", "exec", "-i", "-t", "--user=app", "--workdir=/app", "-e", "X=1", "c", "rails", "console"]
    with pytest.raises(ValueError):
        docker.exec_in("c", [])


# ---------------------------------------------------------------- scripts, run for real with a fake docker
@pytest.fixture
def fake_docker(tmp_path: Path) -> Path:
    """A `docker` on PATH that logs its argv (one JSON list per line) and obeys $FAKE_* knobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    script = bin_dir / "docker"
    script.write_text(f"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
state = {str(tmp_path)!r}
if args[:2] == ["network", "inspect"]:
    sys.exit(0 if os.path.exists(os.path.join(state, "net-" + args[2])) else 1)
if args[:2] == ["network", "create"]:
    if os.environ.get("FAKE_RACE"):
        open(os.path.join(state, "net-" + args[-1]), "w").close()
        print("Error response from daemon: network with name " + args[-1] + " already exists", file=sys.stderr)
        sys.exit(1)
    if os.environ.get("FAKE_FAIL"):
        print("Error response from daemon: permission denied", file=sys.stderr)
        sys.exit(1)
    open(os.path.join(state, "net-" + args[-1]), "w").close()
    print("netid")
    sys.exit(0)
if args[:2] == ["image", "rm"]:
    sys.exit(1 if args[2] in os.environ.get("FAKE_IN_USE", "").split() else 0)
if args[0] == "ps":
    print(os.environ.get("FAKE_IDS", ""))
    sys.exit(0)
if args[:2] == ["container", "inspect"]:
    missing = os.environ.get("FAKE_MISSING_ONCE")
    marker = os.path.join(state, "missing-done")
    if missing and missing in args and not os.path.exists(marker):
        open(marker, "w").close()
        print('{{"id":"x"}}')
        print("Error: No such container: " + missing, file=sys.stderr)
        sys.exit(1)
    for a in args[4:]:
        print(json.dumps({{"id": a}}))
    sys.exit(0)
sys.exit(0)
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def _run(argv: list[str], env_dir: Path, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}", **env}
    return subprocess.run(argv, capture_output=True, text=True, env=e, timeout=30)


def _calls(env_dir: Path) -> list[list[str]]:
    log = env_dir / "docker.log"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_ensure_network_exact_argv() -> None:
    argv = docker.ensure_network()
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["nd-network", "nextdeploy", "com.nextdeploy.role=network"]
    assert "nextdeploy" not in argv[2]
    with pytest.raises(ValueError):
        docker.ensure_network("--x")


def test_ensure_network_is_idempotent(fake_docker: Path) -> None:
    first = _run(docker.ensure_network(), fake_docker)
    assert (first.returncode, first.stdout) == (0, "created\n")
    second = _run(docker.ensure_network(), fake_docker)
    assert (second.returncode, second.stdout) == (0, "exists\n")
    creates = [c for c in _calls(fake_docker) if c[:2] == ["network", "create"]]
    assert creates == [["network", "create", "--driver", "bridge", "--label", "com.nextdeploy.role=network",
                        "nextdeploy"]]


def test_ensure_network_lost_race_is_success(fake_docker: Path) -> None:
    out = _run(docker.ensure_network(), fake_docker, FAKE_RACE="1")
    assert (out.returncode, out.stdout, out.stderr) == (0, "exists\n", "")


def test_ensure_network_real_failure_is_reported(fake_docker: Path) -> None:
    out = _run(docker.ensure_network(), fake_docker, FAKE_FAIL="1")
    assert out.returncode == 1 and "permission denied" in out.stderr and out.stdout == ""


def test_prune_images_reports_what_went_and_never_fails(fake_docker: Path) -> None:
    argv = docker.prune_images(["sha256:aa", "sha256:bb", "sha256:cc"])
    assert argv[3:] == ["nd-prune-images", "sha256:aa", "sha256:bb", "sha256:cc"]
    out = _run(argv, fake_docker, FAKE_IN_USE="sha256:bb")
    assert (out.returncode, out.stdout) == (0, "sha256:aa\nsha256:cc\n")
    assert [c for c in _calls(fake_docker)] == [["image", "rm", i] for i in ("sha256:aa", "sha256:bb", "sha256:cc")]
    assert _run(docker.prune_images([]), fake_docker).returncode == 0
    with pytest.raises(ValueError):
        docker.prune_images(["-f"])


def test_list_app_containers_argv_and_run(fake_docker: Path) -> None:
    argv = docker.list_app_containers("web")
    assert argv[3:] == [docker.INSPECT_FORMAT, "com.nextdeploy.app", "web", "com.nextdeploy.role", "app"]
    empty = _run(argv, fake_docker)
    assert (empty.returncode, empty.stdout) == (0, "")
    out = _run(argv, fake_docker, FAKE_IDS="id1\nid2")
    assert out.returncode == 0
    assert [json.loads(x) for x in out.stdout.splitlines()] == [{"id": "id1"}, {"id": "id2"}]
    ps = _calls(fake_docker)[-2]
    assert ps == ["ps", "--all", "--quiet", "--no-trunc", "--filter", "label=com.nextdeploy.app=web",
                  "--filter", "label=com.nextdeploy.role=app"]
    assert _calls(fake_docker)[-1] == ["container", "inspect", "--format", docker.INSPECT_FORMAT, "id1", "id2"]


def test_list_app_containers_retries_when_one_vanishes(fake_docker: Path) -> None:
    out = _run(docker.list_app_containers("web"), fake_docker, FAKE_IDS="id1\nid2", FAKE_MISSING_ONCE="id2")
    assert out.returncode == 0
    assert [json.loads(x) for x in out.stdout.splitlines()] == [{"id": "id1"}, {"id": "id2"}]  # no torn output


def test_image_ids() -> None:
    assert docker.image_ids() == ["docker", "image", "ls", "--no-trunc", "--quiet"]
