"""Command builders return exact argv lists; no SSH involved."""
from __future__ import annotations

import shlex

import pytest

from ndctl.commands import helper, shell


def test_user_command_single_word_is_a_shell_line() -> None:
    assert shell.user_command(["df -h | tail -1"]) == ["sh", "-c", "df -h | tail -1"]


def test_user_command_many_words_are_an_exact_argv() -> None:
    assert shell.user_command(["printf", "%s", "a b; rm -rf /"]) == ["sh", "-c", "printf %s 'a b; rm -rf /'"]


def test_user_command_empty() -> None:
    with pytest.raises(ValueError):
        shell.user_command([])


@pytest.mark.parametrize("sudo,user,expected", [
    (False, "deploy", ["true"]),
    (True, "root", ["true"]),
    (True, "deploy", ["sudo", "-n", "--", "true"]),
])
def test_with_sudo(sudo: bool, user: str, expected: list[str]) -> None:
    assert shell.with_sudo(["true"], sudo=sudo, user=user) == expected


def test_for_host_follows_the_hosts_sudo_and_user() -> None:
    from ndctl.core.inventory import Host

    assert shell.for_host(["true"], Host("h", "10.0.0.1", user="deploy", sudo=True)) == ["sudo", "-n", "--", "true"]
    assert shell.for_host(["true"], Host("h", "10.0.0.1", user="root", sudo=True)) == ["true"]
    assert shell.for_host(["true"], Host("h", "10.0.0.1", user="deploy")) == ["true"]


def test_helper_run_argv_passes_values_as_positional_parameters() -> None:
    argv = helper.run_argv("/var/lib/nextdeploy", "abc123", ["facts"])
    assert argv[:2] == ["sh", "-c"]
    assert argv[3:] == ["ndctl-helper", "/var/lib/nextdeploy", "abc123", "facts"]
    assert "/var/lib/nextdeploy" not in argv[2]  # the script never embeds a value
    assert 'exec python3 -I -S "$f" "$@"' in argv[2]
    assert "exit 199" in argv[2] and helper.MISSING == 199


def test_helper_upload_argv() -> None:
    argv = helper.upload_argv("/opt/x", "h", 1234, ["metrics", "--interval", "0.5"])
    assert argv[4:] == ["/opt/x", "h", "1234", "metrics", "--interval", "0.5"]
    assert 'head -c "$size"' in argv[2]
    assert "hashlib.sha256" in argv[3]  # $0: the verifier run before the file is moved into place
    assert 'mv -f "$t" "$f"' in argv[2]


def test_transport_line_is_shlex_join() -> None:
    argv = helper.run_argv("/var/lib/nextdeploy", "abc", ["facts"])
    assert shlex.split(shlex.join(argv)) == argv


def test_purge_refuses_odd_directories() -> None:
    argv = helper.purge_argv("/var/lib/nextdeploy")
    assert argv[-1] == "/var/lib/nextdeploy"
    assert "*/nextdeploy) ;;" in argv[2]
