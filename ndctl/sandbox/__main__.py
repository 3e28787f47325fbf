"""``python3 -m ndctl.sandbox up [N] | down | status | image`` (until the CLI wires ``ndctl sandbox``)."""
from __future__ import annotations

import json
import sys
import time

from . import DEFAULT_WORKDIR, SandboxError, down, ensure_image, status, up


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "status"
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    try:
        if cmd == "image":
            t0 = time.monotonic()
            print(ensure_image(log=log))
            log(f"({time.monotonic() - t0:.1f}s)")
        elif cmd == "up":
            t0 = time.monotonic()
            hosts = up(int(argv[1]) if len(argv) > 1 else 3, DEFAULT_WORKDIR, log=log)
            for h in hosts:
                print(f"{h.name}\t{h.user}@{h.address}:{h.port}\t{h.host_key}")
            log(f"ready in {time.monotonic() - t0:.1f}s; try: ssh -F {DEFAULT_WORKDIR / 'ssh_config'} {hosts[0].name}")
        elif cmd == "down":
            print("\n".join(down(DEFAULT_WORKDIR)))
        elif cmd == "status":
            print(json.dumps([s.to_dict() for s in status(DEFAULT_WORKDIR)], indent=2))
        else:
            log(__doc__)
            return 2
    except SandboxError as exc:
        log(f"error: {exc}")
        if exc.hint:
            log(f"hint: {exc.hint}")
        return int(exc.exit_status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
