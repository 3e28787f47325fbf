"""HTTPS through Caddy with `proxy.tls: internal` on a real test host: a certificate from
Caddy's own CA for the app's host name, and plain HTTP redirected."""
from __future__ import annotations

import json
import subprocess

import pytest

from ndctl.sandbox import caddyimage

from .conftest import reset_host
from .test_deploy import build_app_image

pytestmark = pytest.mark.e2e

APP = "ndttls"

PROBE = r"""
import http.client, json, ssl, sys, time
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
out = {}
for _ in range(100):  # Caddy obtains the certificate in the background after the config loads
    try:
        c = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=5)
        c.sock = ctx.wrap_socket(__import__("socket").create_connection(("127.0.0.1", 443), 5),
                                 server_hostname="shop.test")
        c.request("GET", "/", headers={"Host": "shop.test"})
        r = c.getresponse()
        out["https"] = [r.status, r.read().decode().strip()]
        der = c.sock.getpeercert(binary_form=True)
        out["cert"] = der.hex()
        break
    except (OSError, ssl.SSLError) as e:
        out["error"] = str(e); time.sleep(0.2)
c = http.client.HTTPConnection("127.0.0.1", 80, timeout=5)
c.request("GET", "/x?y=1", headers={"Host": "shop.test"})
r = c.getresponse()
out["http"] = [r.status, r.getheader("Location")]
print(json.dumps(out))
"""


def test_https_with_caddys_internal_ca(cli, container_hosts, ssh_block, tmp_path) -> None:
    host = container_hosts[0]
    cli.ssh_config.write_text(ssh_block("tls-0", host))
    assert cli("agent", "register", "--name", "tls-0", "--tags", "tlstest", "--trust-host-key").returncode == 0
    proxy_ref = caddyimage.build_caddy_image()
    caddyimage.load_into(host, proxy_ref)
    build_app_image(tmp_path, "ndt-tls:v1", "hello over tls")
    spec = tmp_path / "nextdeploy.yaml"
    spec.write_text(f"""
app: {APP}
image: ndt-tls:v1
port: 8080
tags: tlstest
health_check: {{path: /health, interval: 0.3s, deadline: 20s}}
proxy: {{kind: caddy, hosts: [shop.test], tls: internal, image: {proxy_ref}}}
drain: 1s
grace: 1s
""")
    try:
        r = cli("deploy", "-f", str(spec), timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(host.exec("python3", "-c", PROBE).stdout)
        assert out.get("https") == [200, "hello over tls"], out
        assert out["http"] == [308, "https://shop.test/x?y=1"]
        cert = bytes.fromhex(out["cert"])
        assert b"Caddy Local Authority" in cert and b"shop.test" in cert
        # certificates live in the proxy's data volume, not in the container
        vols = host.exec("docker", "inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", "nextdeploy-proxy").stdout
        assert "nextdeploy-proxy-data" in vols
    finally:
        reset_host(host, APP)
        subprocess.run(["docker", "rmi", "-f", "ndt-tls:v1"], capture_output=True)
