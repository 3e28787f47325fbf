"""Registry credentials for pulls: from the environment or stdin, refused before any host when missing."""
from __future__ import annotations

import io

import pytest

from ndctl.core.appspec import parse_appspec
from ndctl.core.errors import ExitStatus, UsageError
from ndctl.ops.images import pull_argv, registry_auth

SPEC = parse_appspec("app: web\nimage: 127.0.0.1:5000/web:1\nport: 80\n"
                     "registry: {server: '127.0.0.1:5000', username: deploy, password_env: REG_PW}\n")
BARE = parse_appspec("app: web\nimage: web:1\nport: 80\n")


def test_password_from_the_named_variable_never_printed() -> None:
    auth = registry_auth(SPEC.registry, environ={"REG_PW": "s3cret"})
    assert (auth.username, auth.server, auth.password.reveal()) == ("deploy", "127.0.0.1:5000", "s3cret")
    assert "s3cret" not in repr(auth) and "s3cret" not in str(auth.password)
    argv = pull_argv(SPEC.image, auth)
    assert "s3cret" not in " ".join(argv) and argv[-3:] == ["127.0.0.1:5000/web:1", "deploy", "127.0.0.1:5000"]


def test_password_from_stdin() -> None:
    auth = registry_auth(SPEC.registry, password_stdin=True, stdin=io.StringIO("from-stdin\n"), environ={})
    assert auth.password.reveal() == "from-stdin"


@pytest.mark.parametrize("kw,message", [
    (dict(environ={}), "no password for registry user 'deploy': set REG_PW"),
    (dict(environ={"REG_PW": ""}), "no password for registry user 'deploy': set REG_PW"),
    (dict(password_stdin=True, stdin=io.StringIO(""), environ={}), "stdin held no password"),
])
def test_missing_password_is_a_usage_error(kw: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as e:
        registry_auth(SPEC.registry, **kw)
    assert e.value.exit_status is ExitStatus.USAGE


def test_no_registry_no_credentials() -> None:
    assert registry_auth(BARE.registry, environ={"NDCTL_REGISTRY_PASSWORD": "x"}) is None
    with pytest.raises(UsageError, match="--registry-password-stdin: no registry user"):
        registry_auth(BARE.registry, password_stdin=True, stdin=io.StringIO("pw\n"))
