"""Builders for running operator-supplied commands on hosts."""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ndctl.core.inventory import Host

Argv = list[str]


def user_command(words: Sequence[str]) -> Argv:
    """The argv for ``ndctl exec -- WORDS``.

    One word is a shell command line, so ``ndctl exec -- 'df -h | tail -1'``
    works as it does with ssh. Several words are an exact argv, quoted word by
    word, so ``ndctl exec -- printf %s "a b"`` keeps ``a b`` as one argument.
    """
    if not words:
        raise ValueError("no command given")
    script = words[0] if len(words) == 1 else shlex.join(words)
    return ["sh", "-c", script]


def with_sudo(argv: Argv, *, sudo: bool, user: str) -> Argv:
    """Wrap for a non-root login that escalates with passwordless sudo.

    ``-n`` makes a password prompt fail at once instead of hanging the fan-out.
    """
    if not sudo or user == "root":
        return list(argv)
    return ["sudo", "-n", "--", *argv]


def for_host(argv: Argv, host: "Host") -> Argv:
    """``argv`` as ``host`` (an inventory Host) runs it: through sudo when it says so."""
    return with_sudo(argv, sudo=host.sudo, user=host.user)
