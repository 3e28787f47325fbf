"""The selector language: data-driven cases over a small inventory."""
from __future__ import annotations

import pytest

from ndctl.core.errors import NoHostsMatched, SelectorError
from ndctl.core.inventory import Host
from ndctl.core.selectors import parse_selector, select

HOSTS = [
    Host("prod-web-1", "10.0.0.1", tags=["production", "web", "us-east"], auto_tags=["amd64", "docker"]),
    Host("prod-web-2", "10.0.0.2", tags=["production", "web", "eu-west"], auto_tags=["arm64", "docker"]),
    Host("prod-db-1", "10.0.0.3", tags=["production", "db", "us-east"], auto_tags=["amd64", "high-mem"]),
    Host("stage-web-1", "10.0.1.1", tags=["staging", "web"], auto_tags=["amd64", "gpu-enabled"]),
]

CASES = [
    ("production,web", ["prod-web-1", "prod-web-2"]),
    ("production&web", ["prod-web-1", "prod-web-2"]),
    ("web|db", ["prod-web-1", "prod-web-2", "prod-db-1", "stage-web-1"]),
    ("db|staging", ["prod-db-1", "stage-web-1"]),
    ("production,!db", ["prod-web-1", "prod-web-2"]),
    ("!production", ["stage-web-1"]),
    ("!!production", ["prod-web-1", "prod-web-2", "prod-db-1"]),
    ("name:prod-web-*", ["prod-web-1", "prod-web-2"]),
    ("name:*-1", ["prod-web-1", "prod-db-1", "stage-web-1"]),
    ("us-*", ["prod-web-1", "prod-db-1"]),
    ("tag:eu-west", ["prod-web-2"]),
    ("(web|db),us-east", ["prod-web-1", "prod-db-1"]),
    ("web|db,us-east", ["prod-web-1", "prod-web-2", "prod-db-1", "stage-web-1"]),  # ',' binds tighter
    ("arm64", ["prod-web-2"]),  # auto-tags select too
    ("docker,!arm64", ["prod-web-1"]),
    ("gpu-enabled|high-mem", ["prod-db-1", "stage-web-1"]),
    ("*", ["prod-web-1", "prod-web-2", "prod-db-1", "stage-web-1"]),
    ("all", ["prod-web-1", "prod-web-2", "prod-db-1", "stage-web-1"]),
    (" production , web ", ["prod-web-1", "prod-web-2"]),
    (f"id:{HOSTS[2].id}", ["prod-db-1"]),
]


@pytest.mark.parametrize("selector,expected", CASES)
def test_select(selector: str, expected: list[str]) -> None:
    assert [h.name for h in select(HOSTS, selector)] == expected


@pytest.mark.parametrize("selector", ["nope", "production,staging", "name:zzz*", "!*"])
def test_no_match_is_an_error(selector: str) -> None:
    with pytest.raises(NoHostsMatched) as e:
        select(HOSTS, selector)
    assert selector in str(e.value)


@pytest.mark.parametrize("selector,fragment", [
    ("", "empty selector"),
    ("(web", "expected ')'"),
    ("web)", "unexpected token at position 4"),
    ("web,,db", "position 5"),
    ("web|", "at the end"),
    ("foo:bar", "unknown prefix 'foo:'"),
    ("name:", "needs a pattern"),
    ("web db", "unexpected token at position 5"),
])
def test_parse_errors_name_the_problem(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as e:
        parse_selector(selector)
    assert fragment in str(e.value)


def test_none_selects_everything() -> None:
    assert select(HOSTS, None) == HOSTS


def test_empty_host_list_is_an_error() -> None:
    with pytest.raises(NoHostsMatched):
        select([], None)
