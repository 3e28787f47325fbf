"""Property tests: no user value ever becomes shell syntax.

Each value is pushed through the real quoting path (builder or template,
then ``shlex.join`` as the transport does) and executed by a real ``sh``,
the way sshd hands a command line to the login shell. The value must come
back byte for byte, and a canary file that an injection would create must
not exist.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ndctl.commands import appstate, docker, helper, shell
from ndctl.core import appspec, secretstore
from ndctl.core.errors import UsageError
from ndctl.core.inventory import validate_name, validate_tag
from ndctl.core.templating import render_string

NASTY = st.sampled_from([
    "'", '"', ";", "$(touch CANARY)", "`touch CANARY`", "\n touch CANARY", "&& touch CANARY", "|", "\\",
    "${IFS}", "*", "~", "#", "$HOME", "-rf", "--", " ", "\t", "é", "\u2028",
])
# Values as an attacker would write them: mixtures of shell metacharacters and text (no NUL: argv can't hold it).
VALUES = st.lists(st.one_of(NASTY, st.text(st.characters(blacklist_characters="\x00",
                                                         blacklist_categories=("Cs",)), max_size=8)),
                  max_size=6).map("".join)

HSETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def sh(line: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """What sshd does with a command line: ``$SHELL -c LINE``."""
    return subprocess.run(["sh", "-c", line], cwd=cwd, capture_output=True, timeout=10)


@HSETTINGS
@given(value=VALUES)
def test_builder_argv_survives_the_shell(value: str, tmp_path: Path) -> None:
    line = shlex.join(shell.user_command(["printf", "%s", value]))
    r = sh(line, tmp_path)
    assert r.returncode == 0
    assert r.stdout.decode() == value
    assert not (tmp_path / "CANARY").exists()


@HSETTINGS
@given(value=VALUES, other=VALUES)
def test_template_values_are_always_one_word(value: str, other: str, tmp_path: Path) -> None:
    script = render_string("printf '%s\\0' {{ a }} {{ b }} {{ many }}", a=value, b=other, many=[value, other])
    r = sh(shlex.join(["sh", "-c", script]), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("\0")[:-1] == [value, other, value, other]
    assert not (tmp_path / "CANARY").exists()


@HSETTINGS
@given(value=VALUES)
def test_helper_argv_treats_dir_and_args_as_data(value: str, tmp_path: Path) -> None:
    # The helper is absent under this odd directory: the script must just report MISSING.
    line = shlex.join(helper.run_argv(str(tmp_path / "x") + value, "h" + value, ["facts", value]))
    r = subprocess.run(["sh", "-c", line], cwd=tmp_path, capture_output=True, timeout=10,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")})
    assert r.returncode == helper.MISSING, r.stderr
    assert not (tmp_path / "CANARY").exists()


@given(value=VALUES)
def test_names_and_tags_accept_only_plain_words(value: str) -> None:
    for validate in (validate_tag, validate_name):
        try:
            accepted = validate(value)
        except UsageError as e:
            assert repr(value) in str(e)
        else:
            assert accepted == value and shlex.quote(value) == value  # needs no quoting at all


# ``$`` also matches before a final newline: each name check must refuse "good\n", not pass it on.
NEWLINE_CASES = [
    (docker.check_name, "nd-web-0a1b2c3d"),
    (docker.rm, "nd-web-0a1b2c3d"),
    (docker.image_id, "busybox:1.36"),
    (appstate.read_state, "web"),
    (lambda v: appstate.defuse_stop(v, wait=1), "nd-web-0a1b2c3d"),
    (lambda v: appstate.release_lock("web", v), "0a1b2c3d"),
    (appspec.validate_version, "v1.2.3"),
    (validate_name, "web-1"),
    (validate_tag, "edge"),
    (secretstore.validate_secret_name, "DB_PASSWORD"),
    (secretstore.validate_env_name, "prod"),
]


@pytest.mark.parametrize(("check", "good"), NEWLINE_CASES)
def test_name_checks_refuse_a_trailing_newline(check, good: str) -> None:
    check(good)  # the value itself is accepted
    with pytest.raises((ValueError, UsageError)):
        check(good + "\n")


@pytest.mark.parametrize(("yaml", "error"), [
    ('app: "web\\n"\n', r"app: 'web\\n' is not a valid app name"),
    ('app: web\nproxy:\n  hosts: ["example.com\\n"]\n', r"proxy.hosts\[0\]: 'example.com\\n' is not a host name"),
])
def test_a_trailing_newline_in_nextdeploy_yaml_is_refused_naming_the_field(yaml: str, error: str) -> None:
    with pytest.raises(appspec.AppSpecError, match=error):
        appspec.parse_appspec(yaml + "image: busybox:1\nport: 8080\n")
