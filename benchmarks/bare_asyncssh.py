"""The transport floor: connect to every host at once with asyncssh and run the command(s).

Usage: bare_asyncssh.py HOSTS.json COMMAND [COMMAND...]   (several commands: in order, one connection per host)
HOSTS.json: {"user": ..., "identity": ..., "known_hosts": ..., "hosts": [["127.0.0.2", 2222], ...]}
Prints "ok K/N"; exit status 0 only if every command exited 0 on every host.
"""
import asyncio, json, sys
import asyncssh

async def host(addr, port, cfg, keys, known, cmds):
    async with asyncssh.connect(addr, port, username=cfg["user"], client_keys=keys, known_hosts=known) as conn:
        return all([(await conn.run(c)).exit_status == 0 for c in cmds])

async def main(cfg, cmds):
    keys, known = [asyncssh.read_private_key(cfg["identity"])], asyncssh.read_known_hosts(cfg["known_hosts"])
    oks = await asyncio.gather(*(host(a, p, cfg, keys, known, cmds) for a, p in cfg["hosts"]), return_exceptions=True)
    print(f"ok {sum(r is True for r in oks)}/{len(oks)}", *{repr(r) for r in oks if r is not True})
    return all(r is True for r in oks)

sys.exit(0 if asyncio.run(main(json.load(open(sys.argv[1])), sys.argv[2:])) else 1)
