"""The secret store: round trips, rekey after hosts come and go, wrong identity, the permission check."""
from __future__ import annotations

import json
import os
import stat

import asyncssh
import pyrage
import pytest

from ndctl.core.access import AccessDenied, AccessPolicy, Permission, authorize
from ndctl.core.errors import ExitStatus, UsageError
from ndctl.core.secret import Secret
from ndctl.core.secretstore import (
    AuditRecord,
    IdentityError,
    NoHostKey,
    Recipient,
    SecretNotFound,
    SecretStore,
    host_recipient,
    parse_audit,
)


def host_key() -> tuple[str, object]:
    """(public 'ssh-ed25519 AAAA...', pyrage identity of the private key) for a fake host."""
    k = asyncssh.generate_private_key("ssh-ed25519")
    pub = " ".join(k.export_public_key().decode().split()[:2])
    return pub, pyrage.ssh.Identity.from_buffer(k.export_private_key())


@pytest.fixture
def op():
    ident = pyrage.x25519.Identity.generate()
    return ident, Recipient("operator", "alice", str(ident.to_public()))


@pytest.fixture
def store(tmp_path):
    return SecretStore(tmp_path)


def test_round_trip_operator_and_host_both_decrypt(store, op):
    ident, rop = op
    pub, hident = host_key()
    with store.locked():
        rec = store.put("production", "DB_PASSWORD", Secret("s3cr3t\nline2\n"), [rop, host_recipient("web-1", pub)],
                        who="alice")
    assert store.reveal("production", "DB_PASSWORD", [ident]) == Secret("s3cr3t\nline2\n")
    # the host decrypts the same ciphertext with its SSH host key (what `age -d -i` does on the host)
    assert pyrage.decrypt(rec.ciphertext.encode(), [hident]) == b"s3cr3t\nline2\n"
    text = store.path("production", "DB_PASSWORD").read_text()
    assert "s3cr3t" not in text and "-----BEGIN AGE ENCRYPTED FILE-----" in text
    meta = json.loads(text)
    assert meta["name"] == "DB_PASSWORD" and meta["env"] == "production" and meta["created_by"] == "alice"
    assert {r["name"] for r in meta["recipients"]} == {"alice", "web-1"}
    assert [r.name for r in store.list()] == ["DB_PASSWORD"]
    assert store.envs() == ["production"]


def test_update_keeps_creation_and_no_temp_files_left(store, op):
    ident, rop = op
    with store.locked():
        store.put("staging", "A", Secret("1"), [rop], who="alice", at="2026-01-01T00:00:00+00:00")
        rec = store.put("staging", "A", Secret("2"), [rop], who="bob", at="2026-01-02T00:00:00+00:00")
    assert (rec.created_by, rec.updated_by) == ("alice", "bob")
    assert rec.created_at.startswith("2026-01-01") and rec.updated_at.startswith("2026-01-02")
    assert store.reveal("staging", "A", [ident]).reveal() == "2"
    assert sorted(p.name for p in (store.root / "staging").iterdir()) == ["A.json"]


def test_rekey_after_adding_a_host_lets_it_decrypt(store, op):
    ident, rop = op
    pub1, id1 = host_key()
    pub2, id2 = host_key()
    with store.locked():
        store.put("production", "K", Secret("v"), [rop, host_recipient("h1", pub1)], who="alice")
        rec = store.load("production", "K")
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(rec.ciphertext.encode(), [id2])
        rec, changed = store.rekey("production", "K", [ident], [rop, host_recipient("h1", pub1),
                                                               host_recipient("h2", pub2)], who="alice")
    assert changed and rec.rekeyed_by == "alice" and rec.has_recipient(pub2)
    assert pyrage.decrypt(rec.ciphertext.encode(), [id2]) == b"v"
    assert pyrage.decrypt(rec.ciphertext.encode(), [id1]) == b"v"


def test_rekey_after_removing_a_host_locks_it_out(store, op):
    ident, rop = op
    pub1, id1 = host_key()
    pub2, id2 = host_key()
    with store.locked():
        store.put("production", "K", Secret("v"), [rop, host_recipient("h1", pub1), host_recipient("h2", pub2)],
                  who="alice")
        rec, changed = store.rekey("production", "K", [ident], [rop, host_recipient("h1", pub1)], who="alice")
    assert changed and not rec.has_recipient(pub2)
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(rec.ciphertext.encode(), [id2])
    assert pyrage.decrypt(rec.ciphertext.encode(), [id1]) == b"v"


def test_rekey_with_the_same_recipients_writes_nothing(store, op):
    ident, rop = op
    with store.locked():
        store.put("production", "K", Secret("v"), [rop], who="alice")
        before = store.path("production", "K").read_text()
        _, changed = store.rekey("production", "K", [ident], [rop], who="alice")
    assert not changed and store.path("production", "K").read_text() == before


def test_wrong_identity_is_a_clear_auth_error_and_changes_nothing(store, op):
    _, rop = op
    other = pyrage.x25519.Identity.generate()
    with store.locked():
        store.put("production", "K", Secret("v"), [rop], who="alice")
    before = store.path("production", "K").read_text()
    with pytest.raises(IdentityError) as e:
        store.reveal("production", "K", [other])
    assert e.value.exit_status is ExitStatus.AUTH and "rekey" in e.value.hint
    with pytest.raises(IdentityError), store.locked():
        store.rekey("production", "K", [other], [rop, Recipient("operator", "bob", str(other.to_public()))],
                    who="mallory")
    assert store.path("production", "K").read_text() == before


def test_unknown_secret_and_bad_names(store, op):
    with pytest.raises(SecretNotFound) as e:
        store.load("production", "NOPE")
    assert e.value.exit_status is ExitStatus.NOT_FOUND
    for bad in ("1ABC", "A-B", "../x", ""):
        with pytest.raises(UsageError):
            store.path("production", bad)
    with pytest.raises(UsageError):
        store.path("Prod/../x", "A")
    with pytest.raises(UsageError), store.locked():
        store.put("production", "E", Secret(""), [op[1]], who="alice")


def test_host_recipient_refuses_ecdsa_and_missing_keys():
    for key in (None, "ecdsa-sha2-nistp256 AAAAE2VjZHNh"):
        with pytest.raises(NoHostKey) as e:
            host_recipient("web-1", key)
        assert e.value.exit_status is ExitStatus.HOST_KEY and "ndctl agent register" in e.value.hint


def test_audit_log_is_json_lines_0600_without_values(store):
    store.audit([AuditRecord(at="t", who="alice", action="set", env="production", secret="K")])
    store.audit([AuditRecord(at="t2", who="bob", action="get", env="production", secret="K")])
    assert stat.S_IMODE(os.stat(store.audit_path).st_mode) == 0o600
    recs = store.read_audit()
    assert [(r.who, r.action) for r in recs] == [("alice", "set"), ("bob", "get")]
    assert parse_audit('{"at":"x","who":"w","action":"use","env":"e","secret":"S"}\nnot json\n',
                       host="web-1")[0].host == "web-1"


# --------------------------------------------------------------------------- access
def test_default_policy_everyone_admin():
    p = AccessPolicy()
    assert authorize(p, "anyone", "set", "production", "K") is Permission.WRITE


def test_roles_per_secret_most_specific_wins():
    p = AccessPolicy.from_mapping({
        "default_role": "none",
        "roles": {"ci": {"*": "read", "production/*": "none", "production/DEPLOY_TOKEN": "read"}},
        "members": {"ci@bastion": "ci", "alice": "admin"},
    })
    assert authorize(p, "alice", "rekey", "production", "X") is Permission.WRITE
    assert authorize(p, "ci@bastion", "use", "staging", "X") is Permission.READ
    assert authorize(p, "ci@bastion", "use", "production", "DEPLOY_TOKEN") is Permission.READ
    with pytest.raises(AccessDenied) as e:
        authorize(p, "ci@bastion", "get", "production", "DB_PASSWORD")
    assert e.value.exit_status is ExitStatus.AUTH and "role ci" in e.value.message
    with pytest.raises(AccessDenied):
        authorize(p, "ci@bastion", "set", "staging", "X")
    with pytest.raises(AccessDenied):
        authorize(p, "stranger", "use", "staging", "X")
    assert authorize(p, "stranger", "list", "staging", "X") is Permission.NONE


@pytest.mark.parametrize("doc,msg", [
    ({"roles": {"x": {"*": "admin"}}}, "not read, write or none"),
    ({"members": {"bob": "ghost"}}, "unknown role"),
    ({"default_role": "ghost"}, "unknown role"),
    ({"rolez": {}}, "unknown key"),
])
def test_bad_access_config(doc, msg):
    with pytest.raises(ValueError, match=msg):
        AccessPolicy.from_mapping(doc)
