"""Images and accessories, without real hosts: argv builders, the bounded fan-out of one byte
stream (``Tee``), ``Runner.run_stream`` against the in-process mock sshd, the accessory spec,
plan and scripts (the scripts run against a fake ``docker`` on PATH), and ``ndctl run``'s
command-line parsing."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import mockssh
import pytest

from ndctl.core.errors import ConflictError, NotFoundError, UsageError
from ndctl.core.inventory import Host
from ndctl.core.results import HostResult, Status
from ndctl.core.secret import Secret
from ndctl.ops import accessory as acc
from ndctl.ops import images
from ndctl.transport.ssh import Runner, RunOptions

MOCK_DIR = Path(mockssh.__file__).parent
USER_KEY = MOCK_DIR / "sample-user-key"
SERVER_PUB = (MOCK_DIR / "server-key.pub").read_text().split()

ID_A = "sha256:" + "a" * 64
ID_B = "sha256:" + "b" * 64


# --------------------------------------------------------------------------- image builders


def test_image_builders_exact_argv():
    assert images.image_id_argv("app:1") == ["docker", "image", "inspect", "--format", "{{.Id}}", "--", "app:1"]
    assert images.save_argv("app:1") == ["docker", "save", "--", "app:1"]
    assert images.load_argv() == ["docker", "load"]
    assert images.pull_argv("app:1") == ["docker", "pull", "--", "app:1"]


def test_pull_with_login_keeps_the_password_out_of_argv():
    auth = images.RegistryAuth("bob", Secret("s3cr3t; $(reboot)"), "registry.example:5000")
    argv = images.pull_argv("registry.example:5000/app:1", auth)
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["ndctl-pull", "registry.example:5000/app:1", "bob",
                                                      "registry.example:5000"]
    assert "s3cr3t" not in " ".join(argv)
    assert "--password-stdin" in argv[2] and "DOCKER_CONFIG" in argv[2] and "rm -rf" in argv[2]
    assert images.pull_argv("app", images.RegistryAuth("bob", Secret("x")))[-1] == ""  # Docker Hub
    assert "s3cr3t" not in repr(auth)


def test_pull_login_script_with_fake_docker(tmp_path):
    """The script as sh runs it: password on stdin only, credentials dir gone afterwards."""
    log = tmp_path / "log"
    _fake_docker(tmp_path, f'''
echo "$DOCKER_CONFIG $*" >> {log}
if [ "$1" = login ]; then read -r pw; echo "pw=$pw" >> {log}; fi
''')
    auth = images.RegistryAuth("bob", Secret("s3cr3t"), "reg.example")
    argv = images.pull_argv("reg.example/app:1", auth)
    out = subprocess.run(argv, input="s3cr3t\n", capture_output=True, text=True, env=_env(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = log.read_text().splitlines()
    cfg = lines[0].split()[0]
    assert lines == [f"{cfg} login --username bob --password-stdin -- reg.example", "pw=s3cr3t",
                     f"{cfg} pull -- reg.example/app:1"]
    assert not Path(cfg).exists()


@pytest.mark.parametrize("result, expected", [
    (HostResult("h", Status.OK, 0, ID_A + "\n"), ID_A),
    (HostResult("h", Status.FAILED, 1, "", "Error: No such image: app:1\n"), None),
    (HostResult("h", Status.FAILED, 1, "", "Error response from daemon: No such image: app:1\n"), None),
])
def test_parse_image_id(result, expected):
    assert images.parse_image_id(result) == expected


@pytest.mark.parametrize("result, message", [
    (HostResult("h", Status.FAILED, 127, "", "sh: docker: not found\n"), "docker: not found"),
    (HostResult("h", Status.FAILED, 1, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"),
     "Cannot connect"),
    (HostResult("h", Status.OK, 0, "garbage\n"), "unexpected image id"),
])
def test_parse_image_id_errors(result, message):
    with pytest.raises(ValueError, match=message):
        images.parse_image_id(result)


# --------------------------------------------------------------------------- local engine errors


def _fake_docker(tmp_path: Path, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    f = bin_dir / "docker"
    f.write_text("#!/bin/sh\n" + body)
    f.chmod(0o755)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}


def test_local_image_id_errors_name_the_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(UsageError, match="`docker` command is not installed"):
        asyncio.run(images.local_image_id("app:1"))
    _fake_docker(tmp_path, 'echo "Error: No such image: $7" >&2; exit 1\n')
    with pytest.raises(NotFoundError, match="image 'app:9' is not in the local Docker engine"):
        asyncio.run(images.local_image_id("app:9"))
    _fake_docker(tmp_path, 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. '
                           'Is the docker daemon running?" >&2; exit 1\n')
    with pytest.raises(UsageError, match="no local Docker engine: Cannot connect"):
        asyncio.run(images.local_image_id("app:1"))
    _fake_docker(tmp_path, f'echo {ID_A}\n')
    assert asyncio.run(images.local_image_id("app:1")) == ID_A


def test_ship_refuses_before_touching_hosts_when_the_image_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    _fake_docker(tmp_path, 'echo "Error: No such image: nope:1" >&2; exit 1\n')

    class NoHosts(Runner):
        async def run(self, *a, **kw):  # pragma: no cover - must not be reached
            raise AssertionError("a host was contacted")

    async def go():
        async with NoHosts(RunOptions()) as r:
            await images.ensure_image(r, [Host("h1", "127.0.0.1")], "nope:1")

    with pytest.raises(NotFoundError, match="nope:1"):
        asyncio.run(go())


# --------------------------------------------------------------------------- Tee


def test_tee_copies_every_chunk_to_every_consumer_in_order():
    async def go():
        data = [bytes([i]) * 1000 for i in range(50)]
        src = iter(data)
        tee = images.Tee(3, depth=2)

        async def read():
            return next(src, b"")

        async def consume(sink):
            return [c async for c in sink]

        got = await asyncio.gather(tee.feed(read), *(consume(s) for s in tee.sinks))
        assert got[0] == 50_000
        assert got[1] == got[2] == got[3] == data

    asyncio.run(go())


def test_tee_is_bounded_by_the_slowest_consumer():
    async def go():
        reads = 0

        async def read():
            nonlocal reads
            reads += 1
            return b"x" * 10 if reads <= 100 else b""

        tee = images.Tee(2, depth=4)
        fast = asyncio.ensure_future(_drain(tee.sinks[0]))
        feeder = asyncio.ensure_future(tee.feed(read))
        await asyncio.sleep(0.05)
        # the slow consumer has not read anything: the producer stopped after depth + 1 chunks
        assert reads <= 4 + 2 and tee.sinks[1].queue.qsize() == 4
        slow = asyncio.ensure_future(_drain(tee.sinks[1]))
        assert await feeder == 1000
        assert await fast == await slow == 1000

    asyncio.run(go())


async def _drain(sink) -> int:
    n = 0
    async for c in sink:
        n += len(c)
    return n


def test_tee_drops_a_consumer_that_stops_without_stalling_the_others():
    async def go():
        reads = 0

        async def read():
            nonlocal reads
            reads += 1
            return b"y" * 10 if reads <= 200 else b""

        tee = images.Tee(3, depth=2)
        await tee.sinks[1].aclose()  # a host that failed before reading anything (never iterated)

        async def stop_early(sink):
            n = 0
            async for c in sink:
                n += len(c)
                if n >= 50:
                    await sink.aclose()
                    return n

        got = await asyncio.wait_for(asyncio.gather(tee.feed(read), _drain(tee.sinks[0]), stop_early(tee.sinks[2])), 5)
        assert got == [2000, 2000, 50]

    asyncio.run(go())


def test_tee_stops_reading_when_every_consumer_is_gone():
    async def go():
        reads = 0

        async def read():
            nonlocal reads
            reads += 1
            return b"z"

        tee = images.Tee(2, depth=2)
        for s in tee.sinks:
            await s.aclose()
        assert await asyncio.wait_for(tee.feed(read), 5) == 0 and reads == 0

    asyncio.run(go())


def test_tee_passes_a_producer_failure_to_the_consumers():
    async def go():
        chunks = iter([b"a", b"b"])

        async def read():
            return next(chunks, b"")

        async def finish():
            return RuntimeError("local `docker save app:1` failed (exit 1): boom")

        tee = images.Tee(2, depth=8)
        feeder = asyncio.ensure_future(tee.feed(read, finish))
        for s in tee.sinks:
            got = []
            with pytest.raises(RuntimeError, match="boom"):
                async for c in s:
                    got.append(c)
            assert got == [b"a", b"b"]
        await feeder

        async def broken():
            raise OSError("pipe went away")

        tee = images.Tee(1)
        feeder = asyncio.ensure_future(tee.feed(broken))
        with pytest.raises(OSError, match="pipe went away"):
            await _drain(tee.sinks[0])
        await feeder

    asyncio.run(go())


# --------------------------------------------------------------------------- run_stream (mock sshd)


def _opts(tmp_path: Path, server) -> RunOptions:
    p = tmp_path / "known_hosts"
    p.write_text(f"[{server.host}]:{server.port} {SERVER_PUB[0]} {SERVER_PUB[1]}\n")
    return RunOptions(known_hosts_files=[p])


def _host(server) -> Host:
    return Host("mock-1", server.host, port=server.port, user="ndtest", identity=str(USER_KEY))


class Source:
    """An async byte source recording how far it was read and whether it was closed."""

    def __init__(self, chunks, fail_after=None):
        self.chunks = list(chunks)
        self.given = 0
        self.closed = False
        self.fail_after = fail_after

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.fail_after is not None and self.given >= self.fail_after:
            raise RuntimeError("source broke")
        if self.given >= len(self.chunks):
            raise StopAsyncIteration
        self.given += 1
        return self.chunks[self.given - 1]

    async def aclose(self):
        self.closed = True


def _stream(tmp_path, server, argv, source, **kw):
    async def go():
        async with Runner(_opts(tmp_path, server)) as r:
            return await r.run_stream(_host(server), argv, source, **kw)
    return asyncio.run(go())


def test_run_stream_delivers_binary_chunks(server, tmp_path):
    chunks = [bytes(range(256)) * 64 for _ in range(16)]  # 256 KiB, every byte value
    src = Source(chunks)
    total = sum(map(len, chunks))
    # sha256sum of exactly `total` bytes (the mock sshd never forwards EOF, so `head -c`)
    r = _stream(tmp_path, server, ["sh", "-c", f"head -c {total} | sha256sum"], src)
    import hashlib
    assert r.ok, (r.error, r.stderr)
    assert r.stdout.split()[0] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert r.value == {"stdin_bytes": total} and src.closed and src.given == 16


def test_run_stream_command_that_stops_reading(server, tmp_path):
    src = Source([b"x" * 65536] * 400)  # 25 MiB offered
    r = _stream(tmp_path, server, ["sh", "-c", "head -c 10 >/dev/null; echo 'load failed' >&2; exit 3"], src,
                timeout=60)
    # The mock sshd drops the channel on EPIPE instead of reporting the exit status
    # (OpenSSH reports it: tests/e2e/test_images.py), so only the failure is asserted here.
    assert r.status is Status.FAILED
    assert src.closed and src.given < 400  # the rest was never pulled


def test_run_stream_source_failure_cuts_the_input(server, tmp_path):
    src = Source([b"abc"] * 10, fail_after=2)
    # `timeout 5`: the mock sshd never closes a dropped channel's stdin, and its thread spins
    # (starving later tests of the GIL) until the command ends by itself
    r = _stream(tmp_path, server, ["sh", "-c", "timeout 5 cat >/dev/null"], src, timeout=30)
    assert r.status is Status.FAILED and r.error == "input stream failed: source broke"
    assert src.closed


def test_run_stream_timeout_and_unreachable(server, tmp_path):
    src = Source([b"a"])
    r = _stream(tmp_path, server, ["sleep", "3"], src, timeout=0.5)  # short: see above
    assert (r.status, r.exit_code) == (Status.FAILED, 124) and "timed out" in r.error and src.closed

    async def go():
        async with Runner(RunOptions(connect_timeout=2, connect_attempts=1)) as r:
            s = Source([b"a"])
            res = await r.run_stream(Host("dead", "127.0.0.1", port=_closed_port()), ["true"], s)
            return res, s
    res, s = asyncio.run(go())
    assert res.status is Status.UNREACHABLE and s.closed and s.given == 0


def _closed_port() -> int:
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# --------------------------------------------------------------------------- accessory spec


def test_build_spec_parses_and_defaults():
    s = acc.build_spec("postgres", volumes=["db-data:/var/lib/postgresql"], env=["POSTGRES_PASSWORD=a b'c"],
                       ports=["127.0.0.1:5432:5432", "53:53/udp"], command=["postgres", "-c", "fsync=off"])
    assert s.name == "postgres" and s.network == "nextdeploy"
    assert s.volumes == (acc.VolumeMount("db-data", "/var/lib/postgresql"),)
    assert s.env == (("POSTGRES_PASSWORD", "a b'c"),)
    assert [str(p) for p in s.ports] == ["127.0.0.1:5432:5432/tcp", "53:53/udp"]
    assert "a b'c" not in repr(s)  # env values stay out of reprs
    assert str(acc.parse_port("[::1]:8080:80")) == "[::1]:8080:80/tcp"
    assert acc.parse_volume("cache:/c:ro") == acc.VolumeMount("cache", "/c", True)
    assert acc.parse_env("TOKEN", {"TOKEN": "t0k"}) == ("TOKEN", "t0k")


@pytest.mark.parametrize("image, name", [("postgres:16", "postgres"), ("ghcr.io/org/cache@sha256:" + "c" * 64, "cache"),
                                         ("localhost:5000/team/redis:7-alpine", "redis"), ("_x", "x")])
def test_default_name(image, name):
    assert acc.default_name(image) == name


@pytest.mark.parametrize("kw, message", [
    ({"image": "-rm"}, "not a valid image reference"),
    ({"image": "a b"}, "not a valid image reference"),
    ({"name": "-x"}, "name '-x'"),
    ({"name": "a" * 64}, "at most 63"),
    ({"volumes": ["/srv/data:/data"]}, "host paths are not supported"),
    ({"volumes": ["./data:/data"]}, "host paths"),
    ({"volumes": ["data"]}, "is not a volume"),
    ({"volumes": ["dd:relative"]}, "must be absolute"),
    ({"volumes": ["dd:/x:rx"]}, "mode must be ro or rw"),
    ({"volumes": ["x:/data"]}, "at least 2 characters"),
    ({"volumes": ["a1:/data", "b1:/data"]}, "/data is mounted twice"),
    ({"env": ["1BAD=x"]}, "not an environment variable name"),
    ({"env": ["NOT_SET_ANYWHERE_42"]}, "not set here"),
    ({"ports": ["80"]}, "expected HOST_PORT:CONTAINER_PORT"),
    ({"ports": ["0:80"]}, "not a port number"),
    ({"ports": ["80:80/sctp"]}, "protocol must be tcp or udp"),
    ({"ports": ["nothost:80:80"]}, "not an IP address"),
    ({"ports": ["80:80", "80:81"]}, "host port 80/tcp is given twice"),
])
def test_build_spec_rejects_naming_the_value(kw, message):
    args = {"image": "busybox", "environ": {}, **kw}
    image = args.pop("image")
    name = args.pop("name", None)
    with pytest.raises(UsageError, match=message):
        acc.build_spec(image, name, **args)


SPEC = acc.build_spec("postgres:16", "db", volumes=["db-data:/var/lib/postgresql"], env=["PW=x"],
                      ports=["127.0.0.1:5432:5432"], command=["postgres"], environ={})


def test_container_args_and_labels():
    args = acc.container_args(SPEC, ID_A)
    label = json.dumps(SPEC.record(ID_A), sort_keys=True, separators=(",", ":"))
    assert args == ["--name", "db", "--network", "nextdeploy", "--restart", "unless-stopped",
                    "--label", "com.nextdeploy.role=accessory", "--label", "com.nextdeploy.accessory=db",
                    "--label", f"com.nextdeploy.spec={label}", "-e", "PW=x",
                    "-v", "db-data:/var/lib/postgresql", "-p", "127.0.0.1:5432:5432/tcp", "postgres:16", "postgres"]
    rec = json.loads(label)
    assert rec["env"] == ["PW"] and "x" not in rec["env"] and rec["image_id"] == ID_A
    one = acc.container_args(SPEC, ID_A, name="nd-run-db-abcdef", oneoff=True)
    assert "--restart" not in one and "com.nextdeploy.oneoff=1" in one and not any("spec=" in a for a in one)


def test_create_and_oneoff_argv_pass_values_as_parameters():
    argv = acc.create_argv(SPEC, ID_A)
    assert argv[:2] == ["sh", "-c"] and argv[3:9] == ["ndctl-accessory", "nextdeploy", "1", "db-data", "db", ""]
    assert argv[9:] == acc.container_args(SPEC, ID_A)
    assert acc.create_argv(SPEC, ID_A, "c0ffee")[8] == "c0ffee"
    one = acc.oneoff_argv(SPEC, ID_A, name="nd-run-db-abcdef")
    assert one[3:7] == ["ndctl-run", "nextdeploy", "1", "db-data"] and one[7] == "--rm"
    assert acc.oneoff_argv(SPEC, ID_A, name="n1", detach=True)[7:9] == ["--rm", "-d"]
    assert acc.oneoff_name(SPEC, "abc123") == "nd-run-db-abc123"
    for script in (argv[2], one[2]):
        assert "PW=x" not in script and "db-data" not in script


def _doc(spec=SPEC, image_id=ID_A, running=True, **label_overrides):
    lab = acc.labels(spec, image_id)
    lab.update(label_overrides)
    return {"Id": "c" * 64, "Config": {"Labels": {k: v for k, v in lab.items() if v is not None}},
            "State": {"Running": running}}


def test_plan_table():
    assert acc.plan(SPEC, ID_A, None) == acc.Plan("create", "created")
    assert acc.plan(SPEC, ID_A, _doc()).action == "none"
    assert acc.plan(SPEC, ID_A, _doc()).reason == "already running"
    assert acc.plan(SPEC, ID_A, _doc(running=False)).action == "start"
    p = acc.plan(SPEC, ID_B, _doc())
    assert p.action == "conflict" and "--replace" in p.reason and f'image_id "{ID_A}" -> "{ID_B}"' in p.reason
    assert acc.plan(SPEC, ID_B, _doc(), replace=True).action == "replace"
    other_env = acc.build_spec("postgres:16", "db", volumes=["db-data:/var/lib/postgresql"], env=["PW=y"],
                               ports=["127.0.0.1:5432:5432"], command=["postgres"], environ={})
    assert "env values differ" in acc.plan(other_env, ID_A, _doc()).reason
    foreign = {"Id": "d" * 64, "Config": {"Labels": {}}, "State": {"Running": True}}
    p = acc.plan(SPEC, ID_A, foreign, replace=True)
    assert p.action == "conflict" and "not created by ndctl" in p.reason  # never replaced, even with --replace
    p = acc.plan(SPEC, ID_A, _doc(**{"com.nextdeploy.role": "proxy"}), replace=True)
    assert p.action == "conflict" and "role=proxy" in p.reason


def test_parse_inspect():
    ok = HostResult("h", Status.OK, 0, json.dumps([{"Id": "x"}]))
    assert acc.parse_inspect(ok) == {"Id": "x"}
    assert acc.parse_inspect(HostResult("h", Status.FAILED, 1, "[]", "Error: No such container: db")) is None
    with pytest.raises(ValueError, match="Cannot connect"):
        acc.parse_inspect(HostResult("h", Status.FAILED, 1, "", "Cannot connect to the Docker daemon"))


# The create script against a fake docker that records calls and fails on demand.
FAKE = r'''
echo "$*" >> "$LOG"
case "$1 $2" in
  "network inspect") [ -e "$STATE/net" ] || exit 1 ;;
  "network create") touch "$STATE/net" ;;
  "volume inspect") [ -e "$STATE/vol-$4" ] || exit 1 ;;
  "volume create") touch "$STATE/vol-$5" ;;
  "container inspect") echo true ;;
esac
case "$1" in
  create) [ -n "$FAIL_CREATE" ] && { echo "create: boom" >&2; exit 125; }; echo newid ;;
  start) [ -n "$FAIL_START" ] && [ "$3" = newid ] && { echo "port is already allocated" >&2; exit 1; } ;;
esac
exit 0
'''


def _script(tmp_path, argv, **env):
    _fake_docker(tmp_path, FAKE)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    log = tmp_path / "log"
    log.write_text("")
    e = {**_env(tmp_path), "LOG": str(log), "STATE": str(state), **env}
    out = subprocess.run(argv, capture_output=True, text=True, env=e)
    return out, [line for line in log.read_text().splitlines()]


def test_create_script_happy_path(tmp_path):
    out, calls = _script(tmp_path, acc.create_argv(SPEC, ID_A))
    assert out.returncode == 0 and out.stdout == "newid\n", out.stderr
    assert calls[:4] == ["network inspect nextdeploy", "network create nextdeploy", "volume inspect -- db-data",
                         "volume create --label com.nextdeploy.role=accessory -- db-data"]
    assert calls[4].startswith("create --name db --network nextdeploy") and calls[5] == "start -- newid"


def test_create_script_undoes_its_work_when_start_fails(tmp_path):
    out, calls = _script(tmp_path, acc.create_argv(SPEC, ID_A), FAIL_START="1")
    assert out.returncode == 125 and "port is already allocated" in out.stderr
    assert calls[-2:] == ["rm -f -- newid", "volume rm -- db-data"]


def _docker_calls(calls):
    return [c for c in calls if not c.startswith(("network", "volume"))]


def test_replace_script_sets_the_old_aside_and_restores_it_on_failure(tmp_path):
    out, calls = _script(tmp_path, acc.create_argv(SPEC, ID_A, "oldid"), FAIL_CREATE="1")
    assert out.returncode == 125 and "create: boom" in out.stderr
    c = _docker_calls(calls)
    assert c[:2] == ["container inspect --format {{.State.Running}} -- oldid", "stop -- oldid"]
    assert c[2].startswith("rename oldid db-replaced-") and c[3].startswith("create --name db ")
    assert c[4:] == ["rename oldid db", "start -- oldid"]
    assert calls[-3] == "volume rm -- db-data"  # the volume this run created is gone again
    out, calls = _script(tmp_path, acc.create_argv(SPEC, ID_A, "oldid"))
    assert out.returncode == 0 and _docker_calls(calls)[-2:] == ["start -- newid", "rm -f -- oldid"]


def test_oneoff_script(tmp_path):
    out, calls = _script(tmp_path, acc.oneoff_argv(SPEC, ID_A, name="nd-run-db-abcdef"))
    assert out.returncode == 0
    assert calls[-1].startswith("run --rm --name nd-run-db-abcdef --network nextdeploy")
    assert calls[-1].endswith("postgres:16 postgres")


# --------------------------------------------------------------------------- ndctl run: argument parsing


def test_run_cli_splits_the_command_at_double_dash(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ndctl.cli.main import app
    from ndctl.ops import accessory

    seen = {}

    def fake_build(image, name, **kw):
        seen.update(image=image, name=name, **kw)
        raise UsageError("stop here")

    monkeypatch.setattr(accessory, "build_spec", fake_build)
    runner = CliRunner()
    r = runner.invoke(app, ["run", "busybox", "-v", "d1:/data", "--", "echo", "-v", "hi"])
    assert isinstance(r.exception, UsageError), r.output
    assert seen["image"] == "busybox" and seen["name"] is None
    assert seen["command"] == ["echo", "-v", "hi"] and seen["volumes"] == ["d1:/data"]
    seen.clear()
    runner.invoke(app, ["run", "busybox", "web", "-e", "A=1", "-p", "80:80"])
    assert seen["name"] == "web" and seen["command"] == [] and seen["env"] == ["A=1"] and seen["ports"] == ["80:80"]
    r = runner.invoke(app, ["run", "busybox", "--pull", "sometimes"])
    assert isinstance(r.exception, UsageError) and "--pull" in str(r.exception)


def test_conflict_error_is_exit_8():
    assert int(ConflictError("x").exit_status) == 8
