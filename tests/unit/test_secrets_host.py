"""Host side of secrets: exact command lines, and the unseal and entrypoint scripts run for real
(locally, with their paths moved into a temporary directory)."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import asyncssh
import pyrage
import pytest

from ndctl.commands import docker
from ndctl.commands import secrets as sec
from ndctl.core.appspec import parse_appspec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdzjtq5P+K/kTdAfHsgvG972y08WVndoFAHgsWTWXpE"


def test_exact_command_lines() -> None:
    assert sec.store_ciphertext("web", "DB_PASSWORD") == ["sh", "-c", sec._STORE, "nd-secret-store", "web",
                                                          "DB_PASSWORD"]
    assert sec.unseal("web", who="alice@laptop", expected_host_key=KEY + " root@host") == [
        "/var/lib/nextdeploy/bin/nd-unseal-secrets", "web", "alice@laptop", KEY]
    assert sec.unseal("web", who="a'b c", expected_host_key=KEY, check=True) == [
        "/var/lib/nextdeploy/bin/nd-unseal-secrets", "--check", "web", "a_b_c", KEY]
    assert sec.prune("web", ["A", "B"]) == ["sh", "-c", sec._PRUNE, "nd-secret-prune", "web", "A", "B"]
    assert sec.append_audit() == ["sh", "-c", sec._AUDIT, "nd-secret-audit"]
    assert sec.install_support()[3:] == ["nd-secrets-install", sec.UNSEAL_SCRIPT, sec.ENTRYPOINT_SCRIPT,
                                         sec.SYSTEMD_UNIT, sec.CRON_LINE]
    assert sec.mounts("web") == ["/run/nextdeploy/secrets/web:/run/secrets:ro",
                                 "/var/lib/nextdeploy/bin/nd-secrets-entrypoint:/run/nd-secrets-entrypoint:ro"]
    assert "Before=docker.service" in sec.SYSTEMD_UNIT and "ExecStart=/var/lib/nextdeploy/bin/nd-unseal-secrets" \
        in sec.SYSTEMD_UNIT
    assert sec.CRON_LINE == "@reboot root /var/lib/nextdeploy/bin/nd-unseal-secrets --restart\n"


@pytest.mark.parametrize("call", [
    lambda: sec.store_ciphertext("Web", "A"),
    lambda: sec.store_ciphertext("web", "A;rm"),
    lambda: sec.store_ciphertext("web", "-rf"),
    lambda: sec.unseal("web", who="x", expected_host_key="ecdsa-sha2-nistp256 AAAA"),
    lambda: sec.unseal("web", who="x", expected_host_key="ssh-ed25519 $(id)"),
    lambda: sec.prune("../x", []),
])
def test_bad_values_are_refused(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_run_app_with_secrets_wraps_the_images_entrypoint_and_command() -> None:
    spec = parse_appspec("app: web\nimage: acme/web:1\nport: 8080\nsecrets: [DB_PASSWORD, API_TOKEN]\n"
                         "env: {MODE: prod}\n")
    img = docker.ImageCommand.parse('{"entrypoint":["/docker-entrypoint.sh"],"cmd":["nginx","-g","daemon off;"]}\n')
    assert docker.run_app(spec, version="v1", deploy_id="0a1b2c3d", image_command=img) == [
        "docker", "run", "-d", "--name", "nd-web-0a1b2c3d", "--network", "nextdeploy",
        "--restart", "unless-stopped", "--stop-timeout", "10",
        "--label", "com.nextdeploy.app=web", "--label", "com.nextdeploy.version=v1",
        "--label", "com.nextdeploy.deploy-id=0a1b2c3d", "--label", "com.nextdeploy.role=app",
        "--label", "com.nextdeploy.port=8080", "--label", "com.nextdeploy.secrets=DB_PASSWORD,API_TOKEN",
        "-e", "MODE=prod",
        "-v", "/run/nextdeploy/secrets/web:/run/secrets:ro",
        "-v", "/var/lib/nextdeploy/bin/nd-secrets-entrypoint:/run/nd-secrets-entrypoint:ro",
        "--entrypoint", "/run/nd-secrets-entrypoint", "acme/web:1",
        "/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
    # the app's own command replaces the image's CMD, after the image's ENTRYPOINT
    spec2 = parse_appspec("app: web\nimage: acme/web:1\nport: 8080\nsecrets: [A]\ncommand: [puma, -p, '8080']\n")
    assert docker.run_app(spec2, version="v1", deploy_id="0a1b2c3d", image_command=img)[-4:] == [
        "/docker-entrypoint.sh", "puma", "-p", "8080"]
    assert docker.image_command("acme/web:1") == [
        "docker", "image", "inspect", "--format",
        '{"entrypoint":{{json .Config.Entrypoint}},"cmd":{{json .Config.Cmd}}}', "acme/web:1"]
    assert docker.ImageCommand.parse('{"entrypoint":null,"cmd":null}') == docker.ImageCommand((), ())
    with pytest.raises(ValueError):
        docker.run_app(spec, version="v1", deploy_id="0a1b2c3d")  # secrets need the image's command
    with pytest.raises(ValueError, match="no entrypoint or command"):
        docker.run_app(spec, version="v1", deploy_id="0a1b2c3d", image_command=docker.ImageCommand())


def test_entrypoint_wrapper_exports_files_and_execs(tmp_path: Path) -> None:
    d = tmp_path / "secrets"
    d.mkdir()
    (d / "DB_PASSWORD").write_text("it's \"x\" $(id)\n\n")
    (d / "API_TOKEN").write_text("t0k")
    (d / "bad-name").write_text("ignored")
    script = tmp_path / "entry"
    script.write_text(sec.ENTRYPOINT_SCRIPT.replace("/run/secrets", str(d)))
    script.chmod(0o755)
    env = {"PATH": os.environ["PATH"]}
    out = subprocess.run([str(script), "sh", "-c", 'printf "[%s][%s][%s]" "$DB_PASSWORD" "$API_TOKEN" "$0"', "me"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[it's \"x\" $(id)\n\n][t0k][me]"
    assert subprocess.run([str(script)], capture_output=True, env=env, timeout=30).returncode == 64


def _host_keys(keydir: Path, *algs: str) -> dict[str, str]:
    keydir.mkdir(exist_ok=True)
    pubs = {}
    for alg in algs:
        k = asyncssh.generate_private_key(alg)
        short = alg.removeprefix("ssh-")
        pubs[alg] = " ".join(k.export_public_key().decode().split()[:2])
        (keydir / f"ssh_host_{short}_key").write_bytes(k.export_private_key())
        (keydir / f"ssh_host_{short}_key").chmod(0o600)
        (keydir / f"ssh_host_{short}_key.pub").write_text(pubs[alg] + " root@h\n")
    return pubs


def _unseal_script(tmp_path: Path, keydir: Path) -> tuple[Path, Path, Path, Path]:
    state, run, audit = tmp_path / "state", tmp_path / "run", tmp_path / "audit" / "secrets.jsonl"
    script = tmp_path / "unseal"
    script.write_text(sec.UNSEAL_SCRIPT.replace("/var/lib/nextdeploy/secrets", str(state))
                      .replace("/run/nextdeploy/secrets", str(run))
                      .replace("/var/lib/nextdeploy/audit/secrets.jsonl", str(audit))
                      .replace("/etc/ssh/", f"{keydir}/").replace("/run/nextdeploy ", f"{run} "))
    script.chmod(0o755)
    return script, state, run, audit


@pytest.mark.skipif(not shutil.which("age"), reason="the age CLI is not installed")
def test_unseal_with_an_rsa_pinned_key_beside_an_ed25519_one(tmp_path: Path) -> None:
    pubs = _host_keys(tmp_path / "etc-ssh", "ssh-ed25519", "ssh-rsa")
    script, state, run, _ = _unseal_script(tmp_path, tmp_path / "etc-ssh")
    (state / "web").mkdir(parents=True)
    (state / "web" / "K.age").write_bytes(
        pyrage.encrypt(b"rsa-only", [pyrage.ssh.Recipient.from_str(pubs["ssh-rsa"])], armored=True))
    r = subprocess.run([str(script), "web", "alice", pubs["ssh-rsa"]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (run / "web" / "K").read_text() == "rsa-only"


@pytest.mark.skipif(not shutil.which("age"), reason="the age CLI is not installed")
def test_unseal_script_decrypts_with_the_host_key_and_checks_it(tmp_path: Path) -> None:
    keydir = tmp_path / "etc-ssh"
    pub = _host_keys(keydir, "ssh-ed25519")["ssh-ed25519"]
    state, run, audit = tmp_path / "state", tmp_path / "run", tmp_path / "audit" / "secrets.jsonl"
    (state / "web").mkdir(parents=True)
    ct = pyrage.encrypt(b"s3cr3t\n", [pyrage.ssh.Recipient.from_str(pub)], armored=True)
    (state / "web" / "DB_PASSWORD.age").write_bytes(ct)
    script = _unseal_script(tmp_path, keydir)[0]

    def unseal(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60)

    assert unseal("--check", "web", "alice", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAother").returncode == 77
    assert not (run / "web").exists()  # --check and a wrong key: nothing unsealed
    r = unseal("web", "alice", pub)
    assert r.returncode == 0, r.stderr
    f = run / "web" / "DB_PASSWORD"
    assert f.read_text() == "s3cr3t\n" and stat.S_IMODE(f.stat().st_mode) == 0o400
    assert '"action":"unseal"' in audit.read_text() and "s3cr3t" not in audit.read_text()
    f.chmod(0o600)
    f.unlink()
    assert unseal().returncode == 0 and f.read_text() == "s3cr3t\n"  # boot: every app, no arguments
    (state / "web" / "BROKEN.age").write_text("-----BEGIN AGE ENCRYPTED FILE-----\nnope\n")
    r = unseal()
    assert r.returncode == 65 and "cannot decrypt web/BROKEN" in r.stderr
    assert not (run / "web" / "BROKEN").exists() and not (run / "web" / ".BROKEN.tmp").exists()
    os.rename(keydir / "ssh_host_ed25519_key", keydir / "gone")
    assert unseal("web").returncode == 78


def test_prune_removes_unlisted_ciphertexts_and_their_tmpfs_copies(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    for d in (state / "web", run / "web"):
        d.mkdir(parents=True)
    for n in ("KEEP", "OLD"):
        (state / "web" / f"{n}.age").write_text("x")
        (run / "web" / n).write_text("v")
    argv = sec.prune("web", ["KEEP"])
    argv[2] = argv[2].replace(sec.STATE_DIR, str(state)).replace(sec.RUN_DIR, str(run))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "OLD\n"
    assert sorted(p.name for p in (state / "web").iterdir()) == ["KEEP.age"]
    assert sorted(p.name for p in (run / "web").iterdir()) == ["KEEP"]
