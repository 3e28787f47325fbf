"""nextdeploy.yaml: loading, validation errors naming field and line, CLI overrides."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from ndctl.core import appspec
from ndctl.core.appspec import (
    AppSpec,
    AppSpecError,
    HealthCheck,
    Parallelism,
    ProxySpec,
    Volume,
    apply_overrides,
    default_version,
    example_yaml,
    format_duration,
    load_appspec,
    parse_appspec,
    parse_duration,
    parse_parallel,
    parse_status,
    parse_volume,
)
from ndctl.core.errors import ExitStatus, UsageError

DATA = Path(__file__).resolve().parents[1] / "data" / "appspec"
BAD = sorted((DATA / "bad").glob("*.yaml"))


def _expectation(path: Path) -> tuple[str, int | None]:
    """Each bad file starts with `# error: SUBSTRING` and `# line: N` (or `-`)."""
    lines = path.read_text().splitlines()
    err = lines[0].removeprefix("# error: ")
    line = lines[1].removeprefix("# line: ")
    return err, None if line == "-" else int(line)


def test_minimal_file_gets_the_defaults() -> None:
    spec = load_appspec(DATA / "good" / "minimal.yaml")
    assert spec == AppSpec(app="hello", image="ndt-busybox:1", port=8080)
    assert spec.path == str(DATA / "good" / "minimal.yaml")
    assert spec.strategy == "blue-green" and spec.grace == 300 and spec.retain == 3 and spec.drain == 30
    assert spec.tags == "*" and spec.parallel == Parallelism(count=1)
    hc = spec.health_check
    assert (hc.path, hc.port, hc.interval, hc.timeout, hc.successes, hc.failures, hc.start_period, hc.deadline) == \
        ("/", None, 1.0, 2.0, 2, 3, 0.0, 60.0)
    assert spec.proxy == ProxySpec(kind="caddy", hosts=(), image=None)
    assert spec.proxy.image_ref == "caddy:2-alpine"
    assert spec.health_port == 8080


def test_default_health_check_accepts_redirects() -> None:
    # Kamal users' most frequent failure: a check that sees a redirect and fails the deploy.
    hc = HealthCheck()
    assert [hc.accepts(c) for c in (200, 204, 301, 302, 308, 399)] == [True] * 6
    assert [hc.accepts(c) for c in (199, 400, 404, 500, 503)] == [False] * 5


def test_full_file() -> None:
    spec = load_appspec(DATA / "good" / "full.yaml")
    assert spec.app == "shop_api"
    assert spec.image == "registry.example.com:5000/acme/shop-api:2.4.1"
    assert spec.command == ("/bin/busybox", "httpd", "-f", "-p", "3000", "-h", "/var/www/my site")
    assert spec.tags == "(web|api),production,!canary"
    assert spec.health_check == HealthCheck(
        path="/api/health?full=1", port=3001, status=((200, 200), (301, 302), (204, 204)), host="shop.example.com",
        interval=0.5, timeout=1.5, successes=3, failures=0, start_period=2.0, deadline=90.0)
    assert spec.health_port == 3001
    assert spec.env == (("RAILS_ENV", "production"), ("WORKERS", "4"), ("DEBUG", "false"),
                        ("GREETING", "it's \"quoted\"; $(not expanded)"))
    assert spec.volumes == (Volume("uploads", "/app/uploads"), Volume("certs", "/etc/certs", read_only=True))
    assert spec.proxy == ProxySpec(kind="nginx", hosts=("shop.example.com", "*.shop.example.com"),
                                   image="nginx:1.27-alpine")
    assert spec.strategy == "recreate"
    assert spec.parallel == Parallelism(percent=25.0)
    assert (spec.drain, spec.grace, spec.stop_timeout, spec.retain) == (45.0, 600.0, 20.0, 5)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_files_name_the_field_and_line(path: Path) -> None:
    err, line = _expectation(path)
    with pytest.raises(AppSpecError) as ei:
        load_appspec(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: "), msg
    assert err in msg, msg
    if line is not None:
        assert re.search(rf"\(line {line}, column \d+\)$", msg), msg
    assert isinstance(ei.value, UsageError) and ei.value.exit_status == ExitStatus.USAGE


def test_missing_file() -> None:
    with pytest.raises(AppSpecError, match="does not exist") as ei:
        load_appspec(DATA / "nope.yaml")
    assert "ndctl deploy init" in (ei.value.hint or "")


def test_image_may_come_from_the_flag() -> None:
    spec = parse_appspec("app: web\nport: 80\n", require_image=False)
    assert spec.image == ""
    assert apply_overrides(spec, image="web:2").image == "web:2"
    with pytest.raises(AppSpecError, match=r"image: is required \(set image: or pass --image\)"):
        apply_overrides(spec)


def test_overrides_replace_the_file_values() -> None:
    spec = load_appspec(DATA / "good" / "full.yaml")
    out = apply_overrides(spec, image="web@sha256:" + "a" * 64, tags="name:web-*", strategy="blue-green",
                          health_check="/up", parallel="2")
    assert out.image == "web@sha256:" + "a" * 64
    assert out.tags == "name:web-*"
    assert out.strategy == "blue-green"
    assert out.health_check.path == "/up"
    assert out.health_check.successes == 3  # the rest of the file's check stays
    assert out.parallel == Parallelism(count=2)
    assert apply_overrides(spec) == spec


@pytest.mark.parametrize("kw,flag", [
    ({"image": "-it"}, "--image"),
    ({"tags": "web,,"}, "--tags"),
    ({"strategy": "rolling"}, "--strategy"),
    ({"health_check": "health"}, "--health-check"),
    ({"parallel": "0"}, "--parallel"),
    ({"parallel": "x%"}, "--parallel"),
])
def test_bad_overrides_name_the_flag(kw: dict, flag: str) -> None:
    spec = parse_appspec("app: web\nimage: x:1\nport: 80\n")
    with pytest.raises(AppSpecError, match=f"^{flag}: "):
        apply_overrides(spec, **kw)


def test_example_loads_back_to_a_valid_spec(tmp_path: Path) -> None:
    path = tmp_path / "nextdeploy.yaml"
    path.write_text(example_yaml())
    spec = load_appspec(path)
    assert spec.app == "web" and spec.port == 8080 and spec.strategy == "blue-green"
    assert spec.health_check.status == ((200, 399),)
    # the example shows the defaults it claims to show
    defaults = AppSpec(app="web", image=spec.image, port=8080)
    assert (spec.health_check, spec.grace, spec.drain, spec.retain, spec.parallel, spec.stop_timeout) == \
        (defaults.health_check, defaults.grace, defaults.drain, defaults.retain, defaults.parallel,
         defaults.stop_timeout)
    assert example_yaml().count("\n#") >= 1  # commented


def test_to_mapping_round_trips() -> None:
    from ruamel.yaml import YAML

    for name in ("minimal", "full"):
        spec = load_appspec(DATA / "good" / f"{name}.yaml")
        buf = io.StringIO()
        YAML().dump(spec.to_mapping(), buf)
        assert parse_appspec(buf.getvalue()) == spec


@pytest.mark.parametrize("text,seconds", [
    (30, 30.0), (2.5, 2.5), ("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1m30s", 90.0),
    ("500ms", 0.5), ("1h2m3s", 3723.0), ("0", 0.0), (" 10s ", 10.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5 minutes", "-1", "1d", "s", "10s5", True, None, [1], "nan", "inf"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds,text", [(300, "5m"), (3600, "1h"), (90, "90s"), (0, "0s"), (1.5, "1500ms"),
                                          (7200, "2h")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value,ranges", [
    (200, ((200, 200),)), ("200-399", ((200, 399),)), ([200, "301-302"], ((200, 200), (301, 302))),
    (" 204 ", ((204, 204),)),
])
def test_status(value: object, ranges: tuple) -> None:
    assert parse_status(value) == ranges


@pytest.mark.parametrize("value", ["2xx", 99, 600, "300-200", [], True, "200-", [200, None]])
def test_bad_status(value: object) -> None:
    with pytest.raises(ValueError):
        parse_status(value)


@pytest.mark.parametrize("value,n_hosts,size", [
    (1, 10, 1), (3, 10, 3), (30, 10, 10), ("2", 5, 2), ("50%", 3, 2), ("25%", 10, 3), ("100%", 7, 7),
    ("1%", 10, 1), ("33%", 3, 1), (2, 0, 1),
])
def test_parallel_batch_size(value: object, n_hosts: int, size: int) -> None:
    assert parse_parallel(value).batch_size(n_hosts) == size


@pytest.mark.parametrize("value", [0, -1, "0%", "101%", "half", True, 1.5])
def test_bad_parallel(value: object) -> None:
    with pytest.raises(ValueError):
        parse_parallel(value)


@pytest.mark.parametrize("text,vol", [
    ("db-data:/var/lib/postgresql", Volume("db-data", "/var/lib/postgresql")),
    ("certs:/certs:ro", Volume("certs", "/certs", True)),
    ("xy:/y:rw", Volume("xy", "/y")),
])
def test_volumes(text: str, vol: Volume) -> None:
    assert parse_volume(text) == vol
    assert str(parse_volume(text)) == text.removesuffix(":rw")


@pytest.mark.parametrize("text", ["/host:/c", "name", "name:relative", "ab:/b:rx", "ab:/b:ro:x", "-v:/x", "a:/b",
                                  "./x:/y", "a:/b,c", 5])
def test_bad_volumes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_volume(text)


@pytest.mark.parametrize("image,version", [
    ("web:1.2.3", "1.2.3"), ("web", "latest"), ("registry:5000/acme/web", "latest"),
    ("registry:5000/acme/web:v2", "v2"), ("web@sha256:" + "ab" * 32, "ab" * 6),
    ("ndt-busybox:1", "1"),
])
def test_default_version(image: str, version: str) -> None:
    assert default_version(image) == version
    appspec.validate_version(version)


@pytest.mark.parametrize("version", ["", "-x", "a b", "v1;rm", "x" * 129])
def test_bad_version(version: str) -> None:
    with pytest.raises(AppSpecError):
        appspec.validate_version(version)


def test_env_values_become_strings_and_keep_order() -> None:
    spec = parse_appspec("app: web\nimage: x:1\nport: 80\nenv:\n  B: 1\n  A: 1.5\n  C: true\n  D: ''\n")
    assert spec.env == (("B", "1"), ("A", "1.5"), ("C", "true"), ("D", ""))
    assert spec.env_dict == {"B": "1", "A": "1.5", "C": "true", "D": ""}


def test_yaml_12_yes_stays_a_string() -> None:
    spec = parse_appspec("app: web\nimage: x:1\nport: 80\nenv:\n  FLAG: yes\n")
    assert spec.env == (("FLAG", "yes"),)


def test_health_check_shorthand_and_single_host() -> None:
    spec = parse_appspec("app: web\nimage: x:1\nport: 80\nhealth_check: /up\nproxy:\n  hosts: example.com\n")
    assert spec.health_check == HealthCheck(path="/up")
    assert spec.proxy.hosts == ("example.com",)
    assert parse_appspec("app: web\nimage: x:1\nport: 80\nproxy:\n  kind: nginx\n").proxy.image_ref == \
        "nginx:stable-alpine"


def test_specs_are_frozen() -> None:
    spec = parse_appspec("app: web\nimage: x:1\nport: 80\n")
    with pytest.raises(AttributeError):
        spec.image = "y"  # type: ignore[misc]
    hash(spec)


def test_one_health_check_type_from_the_file_to_the_probe() -> None:
    from ndctl.core import health

    spec = load_appspec(DATA / "good" / "full.yaml")
    assert appspec.HealthCheck is health.HealthCheck
    probe = spec.health_check.for_port(spec.port)
    assert (probe.port, probe.path, probe.host, probe.expect, probe.interval, probe.timeout, probe.successes,
            probe.failures, probe.start_period, probe.deadline) == (
        3001, "/api/health?full=1", "shop.example.com", "200,301-302,204", 0.5, 1.5, 3, 0, 2.0, 90.0)
    assert HealthCheck().for_port(8080).port == 8080 and HealthCheck(port=9000).for_port(8080).port == 9000
    with pytest.raises(ValueError, match="no port"):
        HealthCheck().helper_args(container="nd-web-1")


def test_start_period_must_leave_time_before_the_deadline() -> None:
    with pytest.raises(AppSpecError, match=r"health_check.start_period: 1m is not shorter than the deadline 1m"):
        parse_appspec("app: web\nimage: x:1\nport: 80\nhealth_check: {start_period: 60s}\n")
    # a start period does not delay the successes (Docker's semantics): this fits
    spec = parse_appspec("app: web\nimage: x:1\nport: 80\nhealth_check: {start_period: 50s, successes: 3, "
                         "interval: 10s, deadline: 55s}\n")
    assert spec.health_check.start_period == 50.0


# ---------------------------------------------------------------- registry
def test_registry_section_and_its_defaults() -> None:
    spec = parse_appspec("app: web\nimage: ghcr.io/acme/web:1\nport: 80\nregistry:\n  username: deploy\n")
    assert spec.registry == appspec.RegistrySpec(username="deploy", server=None,
                                                 password_env="NDCTL_REGISTRY_PASSWORD")
    spec = parse_appspec("app: web\nimage: x:1\nport: 80\nregistry: {server: '127.0.0.1:5000', username: u, "
                         "password_env: REG_PW}\n")
    assert spec.registry == appspec.RegistrySpec(username="u", server="127.0.0.1:5000", password_env="REG_PW")
    from ruamel.yaml import YAML

    buf = io.StringIO()
    YAML().dump(spec.to_mapping(), buf)
    assert parse_appspec(buf.getvalue()) == spec


def test_registry_flags_override_or_create_the_section() -> None:
    spec = parse_appspec("app: web\nimage: x:1\nport: 80\nregistry: {server: a.example, username: u}\n")
    out = apply_overrides(spec, registry_server="b.example:5000")
    assert out.registry == appspec.RegistrySpec(username="u", server="b.example:5000")
    bare = parse_appspec("app: web\nimage: x:1\nport: 80\n")
    assert apply_overrides(bare, registry_user="ci").registry == appspec.RegistrySpec(username="ci")
    with pytest.raises(AppSpecError, match="--registry-server: also give --registry-user"):
        apply_overrides(bare, registry_server="a.example")
    with pytest.raises(AppSpecError, match="--registry-user: '-x' is not a user name"):
        apply_overrides(bare, registry_user="-x")


def test_proxy_tls_modes_and_rules() -> None:
    base = "app: web\nimage: x:1\nport: 80\n"
    spec = parse_appspec(base + "proxy: {hosts: [shop.test], tls: internal}\n")
    assert spec.proxy.tls == "internal" and spec.to_mapping()["proxy"]["tls"] == "internal"
    assert parse_appspec(base + "proxy: {hosts: [shop.test], tls: off}\n").proxy.tls == "off"
    for text, msg in [("proxy: {hosts: [a.test], tls: yes}", "proxy.tls: 'yes' is not off, auto or internal"),
                      ("proxy: {tls: auto}", "proxy.tls: needs proxy.hosts"),
                      ("proxy: {kind: nginx, hosts: [a.test], tls: auto}", "managed by the caddy proxy only")]:
        with pytest.raises(AppSpecError, match=re.escape(msg)):
            parse_appspec(base + text + "\n")
