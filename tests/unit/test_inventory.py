"""Inventory: round trips that keep comments and order, atomic writes, clear errors."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ndctl.core.errors import InventoryError, NotFoundError, UsageError
from ndctl.core.inventory import Host, Inventory, agent_id, locked, parse_tag_list

ROOT = Path(__file__).resolve().parents[2]

HAND_WRITTEN = """\
# my fleet, do not lose this comment
version: 1
hosts:
  # the database first, on purpose
  db-1:
    address: 10.0.0.3   # primary
    tags: [production, db]
  web-1:
    address: 10.0.0.1
    port: 2222
    user: deploy
    tags:
      - production
      - web
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inventory.yaml"
    p.write_text(text)
    return p


def test_example_inventory_documents_a_valid_file() -> None:
    inv = Inventory.load(ROOT / "inventory.example.yaml")
    h = inv.get("prod-web-1")
    assert h.tags == ["production", "web", "us-east"]
    assert h.id == agent_id("prod-web-1")
    assert inv.thresholds.high_mem_gib == 32
    assert inv.settings.forks == 100


def test_round_trip_keeps_comments_and_order(tmp_path: Path) -> None:
    p = write(tmp_path, HAND_WRITTEN)
    inv = Inventory.load(p)
    assert [h.name for h in inv] == ["db-1", "web-1"]
    assert inv.get("web-1").port == 2222 and inv.get("web-1").user == "deploy"
    inv.upsert(Host("app-1", "10.0.0.9", tags=["staging"]))
    inv.save()
    text = p.read_text()
    assert "# my fleet, do not lose this comment" in text
    assert "# the database first, on purpose" in text
    assert "# primary" in text
    assert text.index("db-1:") < text.index("web-1:") < text.index("app-1:")
    again = Inventory.load(p)
    assert again.get("app-1").tags == ["staging"]
    assert again.get("app-1").id == agent_id("app-1")


def test_untouched_hosts_keep_their_formatting(tmp_path: Path) -> None:
    p = write(tmp_path, HAND_WRITTEN)
    inv = Inventory.load(p)
    inv.upsert(inv.get("web-1"))
    inv.save()
    assert "      - production\n      - web\n" in p.read_text()


def test_update_is_not_a_duplicate(tmp_path: Path) -> None:
    p = write(tmp_path, HAND_WRITTEN)
    inv = Inventory.load(p)
    h = inv.get("db-1")
    h.tags = ["production", "db", "primary"]
    assert inv.upsert(h) is False
    inv.save()
    assert Inventory.load(p).get("db-1").tags == ["production", "db", "primary"]
    assert p.read_text().count("db-1:") == 1


def test_lookup_by_id_and_prefix(tmp_path: Path) -> None:
    inv = Inventory.load(write(tmp_path, HAND_WRITTEN))
    hid = agent_id("web-1")
    assert inv.get(hid).name == "web-1"
    assert inv.get(hid[:5]).name == "web-1"
    with pytest.raises(NotFoundError, match="no agent named or with id 'nope'"):
        inv.get("nope")


@pytest.mark.parametrize("text,fragment", [
    ("hosts:\n  a: {address: x\n", "invalid YAML at line"),
    ("hosts:\n\tweb: {}\n", "invalid YAML at line 2"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("version: 2\nhosts: {}\n", "unsupported inventory version 2"),
    ("hosts: {}\nhostz: {}\n", "unknown top-level key 'hostz' (known:"),
    ("hosts:\n  web-1:\n    port: 22\n", "host 'web-1': 'address' is required"),
    ("hosts:\n  web-1:\n    address: a\n    port: 99999\n", "port must be 1-65535, not 99999 (line 4"),
    ("hosts:\n  web-1:\n    address: a\n    tagz: [x]\n", "unknown key 'tagz'"),
    ("hosts:\n  web-1:\n    address: a\n    tags: [ok, 'bad tag']\n", "invalid tag 'bad tag'"),
    ("hosts:\n  'bad name':\n    address: a\n", "invalid host name 'bad name'"),
    ("hosts:\n  web-1:\n    address: a\n    sudo: maybe\n", "sudo must be true or false"),
    ("settings:\n  forks: 0\nhosts: {}\n", "settings.forks must be a positive integer"),
    ("autotags:\n  high_mem_gb: 3\nhosts: {}\n", "high_mem_gb"),
    ("hosts:\n  web-1:\n    address: a\n    host_key: not-a-key\n", "host_key must be an OpenSSH public key"),
])
def test_malformed_files_are_reported_and_never_overwritten(tmp_path: Path, text: str, fragment: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(InventoryError) as e:
        Inventory.load(p)
    assert fragment in str(e.value)
    assert str(p) in str(e.value)
    with pytest.raises(InventoryError):
        with locked(p) as inv:  # a read-modify-write must fail before writing anything
            inv.save()
    assert p.read_text() == text


def test_missing_file_is_an_empty_inventory_created_0600(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "inventory.yaml"
    inv = Inventory.load(p)
    assert len(inv) == 0 and not inv.exists
    inv.upsert(Host("a", "127.0.0.1", tags=["x"]))
    inv.save()
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert Inventory.load(p).get("a").address == "127.0.0.1"


def test_save_is_atomic_when_the_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, HAND_WRITTEN)
    inv = Inventory.load(p)
    inv.upsert(Host("app-1", "10.0.0.9"))

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        inv.save()
    assert p.read_text() == HAND_WRITTEN
    assert [x.name for x in tmp_path.iterdir()] == ["inventory.yaml"]  # no temporary file left behind


def test_remove(tmp_path: Path) -> None:
    p = write(tmp_path, HAND_WRITTEN)
    inv = Inventory.load(p)
    assert inv.remove(agent_id("db-1")).name == "db-1"
    inv.save()
    assert [h.name for h in Inventory.load(p)] == ["web-1"]
    assert "# my fleet" in p.read_text()


@pytest.mark.parametrize("text,expected", [
    ("production,web,us-east", ["production", "web", "us-east"]),
    (" a , b ,, a ", ["a", "b"]),
    ("", []),
])
def test_parse_tag_list(text: str, expected: list[str]) -> None:
    assert parse_tag_list(text) == expected


def test_parse_tag_list_rejects_bad_tags() -> None:
    with pytest.raises(UsageError, match="invalid tag 'we b'"):
        parse_tag_list("ok,we b")


def test_env_var_names_the_default_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, HAND_WRITTEN)
    monkeypatch.setenv("NDCTL_INVENTORY", str(p))
    assert [h.name for h in Inventory.load()] == ["db-1", "web-1"]


def test_defaults_apply_and_differences_are_written(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\ndefaults:\n  port: 2222\n  sudo: true\n  user: deploy\nhosts: {}\n")
    inv = Inventory.load(p)
    inv.upsert(Host("follows", "10.0.0.1", port=2222, user="deploy", sudo=True))
    inv.upsert(Host("differs", "10.0.0.2", port=22, user="root", sudo=False))
    inv.save()
    again = Inventory.load(p)
    a, b = again.get("follows"), again.get("differs")
    assert (a.port, a.user, a.sudo) == (2222, "deploy", True)
    assert (b.port, b.user, b.sudo) == (22, "root", False)  # not silently turned into the defaults
    assert "port: 2222" not in p.read_text().split("follows:")[1].split("differs:")[0]


@pytest.mark.parametrize("text", [HAND_WRITTEN, (ROOT / "inventory.example.yaml").read_text(),
                                  "version: 1\nhosts:\n  a: {address: x, tags: [no, on, yes]}\n"])
def test_readonly_fast_path_reads_what_the_round_trip_path_reads(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    fast, slow = Inventory.load(p, readonly=True), Inventory.load(p)
    assert fast.readonly and not slow.readonly
    assert [vars(h) for h in fast] == [vars(h) for h in slow]
    assert (fast.settings, fast.defaults, fast.thresholds) == (slow.settings, slow.defaults, slow.thresholds)
    with pytest.raises(RuntimeError, match="read-only"):
        fast.save()


def test_readonly_errors_still_name_line_and_column(tmp_path: Path) -> None:
    p = write(tmp_path, "hosts:\n  web-1:\n    address: a\n    sudo: yes\n")
    with pytest.raises(InventoryError, match=r"sudo must be true or false \(line 4"):
        Inventory.load(p, readonly=True)


def test_hand_written_fields_equal_to_defaults_survive_updates(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\nhosts:\n  web-1:\n    address: a\n    port: 22   # explicit on purpose\n"
                        "    sudo: false\n    tags: [x]\n")
    inv = Inventory.load(p)
    h = inv.get("web-1")
    h.tags = ["x", "y"]
    inv.upsert(h)
    inv.save()
    text = p.read_text()
    assert "port: 22   # explicit on purpose" in text and "sudo: false" in text
    assert Inventory.load(p).get("web-1").tags == ["x", "y"]


# --------------------------------------------------------------------------- secrets sections
SECRETS_INV = HAND_WRITTEN.replace("hosts:\n", """\
environments:
  production: production      # every production host
  staging: staging
operators:
  alice: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
access:
  default_role: deployer
  members: {alice: admin}
hosts:
""", 1)


def test_environments_operators_and_access(tmp_path: Path) -> None:
    inv = Inventory.load(write(tmp_path, SECRETS_INV))
    assert inv.environments == {"production": "production", "staging": "staging"}
    assert [h.name for h in inv.environment_hosts("production")] == ["db-1", "web-1"]
    assert inv.environment_hosts("staging") == []  # no host yet: empty, not an error
    assert inv.environments_of(inv.get("web-1")) == ["production"]
    assert inv.operators["alice"].startswith("age1")
    assert inv.access_doc["default_role"] == "deployer"
    with pytest.raises(NotFoundError, match="no environment 'qa'"):
        inv.environment_hosts("qa")


def test_secrets_sections_round_trip_keeps_comments(tmp_path: Path) -> None:
    with locked(write(tmp_path, HAND_WRITTEN)) as inv:
        inv.set_mapping_entry("environments", "production", "production,web")
        inv.set_mapping_entry("operators", "bob", "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p")
        inv.save()
    text = (tmp_path / "inventory.yaml").read_text()
    assert "# the database first, on purpose" in text and "# primary" in text
    assert text.index("environments:") < text.index("hosts:")
    inv = Inventory.load(tmp_path / "inventory.yaml")
    assert inv.environments == {"production": "production,web"} and list(inv.operators) == ["bob"]
    with locked(tmp_path / "inventory.yaml") as inv:
        inv.set_mapping_entry("operators", "bob", None)
        inv.save()
    assert Inventory.load(tmp_path / "inventory.yaml").operators == {}


@pytest.mark.parametrize("section,message", [
    ("environments:\n  Prod: production\n", "environments: invalid name 'Prod' (1-40 lowercase letters, digits, '_' or '-') (line 4"),
    ("environments:\n  prod: 'web,,'\n", "environments.prod:"),
    ("operators:\n  bob: ssh-ed25519 AAAA\n", "operators.bob must be an age recipient (age1...) (line 4"),
    ("access:\n  members: {bob: ghost}\n", "access: members.bob: unknown role 'ghost'"),
])
def test_bad_secrets_sections_name_the_line(tmp_path: Path, section: str, message: str) -> None:
    text = HAND_WRITTEN.replace("hosts:\n", section + "hosts:\n", 1)
    with pytest.raises(InventoryError) as e:
        Inventory.load(write(tmp_path, text))
    assert message in e.value.message
