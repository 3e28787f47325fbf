"""Builders for running the on-demand helper.

The helper lives at ``<dir>/helper-<hash>.py``. ``run_argv`` checks and runs it
in one round trip; only when it is missing (exit status ``MISSING``) does the
caller send ``upload_argv`` with the file on stdin, which installs and runs it.
User values travel as positional parameters of a fixed script, so no value
is ever spliced into shell syntax.
"""
from __future__ import annotations

from typing import Sequence

MISSING = 199  # helper file not on the host yet
NO_PYTHON = 127
UPLOAD_FAILED = 198

_PREAMBLE = (
    'dir="$1"; hash="$2"; shift 2; '
    "if ! command -v python3 >/dev/null 2>&1; then "
    "echo 'ndctl: python3 is not installed on this host; the ndctl helper needs python3 >= 3.6 "
    "(Debian/Ubuntu: apt-get install python3)' >&2; exit 127; fi; "
)

# The helper is stdlib-only, so it runs with -I -S (no site-packages, no user
# environment): about half of python3's start-up, and nothing from the host's
# Python environment can change what it does.
# A login that cannot write the system directory (non-root without sudo)
# keeps its helper under $HOME/.cache instead: not ~/.nextdeploy, which is where
# the controller keeps its inventory when the host is also a controller.
_RUN = _PREAMBLE + (
    'for d in "$dir" "$HOME/.cache/nextdeploy"; do f="$d/helper-$hash.py"; '
    'if [ -s "$f" ]; then exec python3 -I -S "$f" "$@"; fi; done; exit 199'
)

# The upload is verified against its hash before it is moved into place: a
# dropped connection must never leave a truncated helper under a valid name.
_VERIFY = ("import hashlib,sys; d=hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest(); "
           "sys.exit(0 if d.startswith(sys.argv[2]) else 1)")
# Reads exactly $size bytes rather than waiting for EOF on stdin, so the same
# channel could carry more, and a peer that never sends EOF cannot hang it.
_UPLOAD = _PREAMBLE + (
    'size="$1"; shift; d="$dir"; if ! { mkdir -p -m 0755 "$d" 2>/dev/null && [ -w "$d" ]; }; then '
    'd="$HOME/.cache/nextdeploy"; mkdir -p -m 0700 "$d" || exit 198; fi; '
    'f="$d/helper-$hash.py"; t="$f.$$.tmp"; '
    'if ! { head -c "$size" > "$t" && python3 -I -S -c "$0" "$t" "$hash" && chmod 0644 "$t" && mv -f "$t" "$f"; }; '
    'then rm -f "$t"; '
    "echo \"ndctl: uploading the helper to $d failed (short or corrupt upload)\" >&2; exit 198; fi; "
    'exec python3 -I -S "$f" "$@"'
)


def run_argv(helper_dir: str, helper_hash: str, args: Sequence[str]) -> list[str]:
    return ["sh", "-c", _RUN, "ndctl-helper", helper_dir, helper_hash, *args]


def upload_argv(helper_dir: str, helper_hash: str, size: int, args: Sequence[str]) -> list[str]:
    """Install the helper from stdin (``size`` bytes), verify its hash, then run it."""
    return ["sh", "-c", _UPLOAD, _VERIFY, helper_dir, helper_hash, str(size), *args]


def purge_argv(helper_dir: str) -> list[str]:
    """Remove ndctl's files from a host (``agent remove --purge``).

    Refuses any directory not named ``nextdeploy``: a typo in settings must not
    turn into ``rm -rf /``.
    """
    return [
        "sh", "-c",
        'case "$1" in */nextdeploy) ;; *) echo "ndctl: refusing to purge $1" >&2; exit 2;; esac; '
        'rm -rf -- "$1" "$HOME/.cache/nextdeploy"',
        "ndctl-purge", helper_dir,
    ]
