"""The backends and fixtures: two nginx servers, two dnsmasq servers, files, a TLS certificate.

One nginx master with a single worker (`worker_processes 1`) serves two `server` blocks on
two ports: the two HTTP backends.  Two dnsmasq processes are the two DNS backends.
"""

import os
import subprocess

import procs

SMALL_BYTES = 100
DNS_DOMAIN = "bench.test"
DNS_ANSWER = "127.0.0.9"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-temp/body;
    proxy_temp_path {tmp}/nginx-temp/proxy;
    fastcgi_temp_path {tmp}/nginx-temp/fastcgi;
    uwsgi_temp_path {tmp}/nginx-temp/uwsgi;
    scgi_temp_path {tmp}/nginx-temp/scgi;
    server {{ listen 127.0.0.1:{port1} backlog=4096; root {tmp}/www; }}
    server {{ listen 127.0.0.1:{port2} backlog=4096; root {tmp}/www; }}
}}
"""


def make_files(tmp, big_bytes):
    """www/small (100 bytes) and www/big (a sparse file of big_bytes), readable by nginx's worker."""
    www = os.path.join(tmp, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "small"), "wb") as f:
        f.write(b"x" * (SMALL_BYTES - 1) + b"\n")
    with open(os.path.join(www, "big"), "wb") as f:
        f.truncate(big_bytes)
    # nginx's worker runs as 'nobody' when we are root: it must be able to read the tree
    for path in (tmp, www):
        os.chmod(path, 0o755)
    for name in ("small", "big"):
        os.chmod(os.path.join(www, name), 0o644)


def start_nginx(tmp, port1, port2):
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port1=port1, port2=port2))
    os.makedirs(os.path.join(tmp, "nginx-temp"), exist_ok=True)
    proc = procs.start(["nginx", "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "nginx-error.log")],
                       os.path.join(tmp, "nginx.out"))
    for port in (port1, port2):
        reason = procs.wait_tcp(port, proc)
        if reason:
            raise RuntimeError("nginx did not start: %s (see %s/nginx-error.log)" % (reason, tmp))
    return proc


def start_dnsmasq(tmp, port, name):
    argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=%d" % port,
            "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
            "--pid-file=", "--cache-size=1000", "--dns-forward-max=1000",
            "--address=/%s/%s" % (DNS_DOMAIN, DNS_ANSWER)]
    return procs.start(argv, os.path.join(tmp, name + ".out"))


def write_queries(tmp, count=1000):
    """A fixed dnsperf input: `count` distinct A queries under the bench domain."""
    path = os.path.join(tmp, "queries.txt")
    with open(path, "w") as f:
        for i in range(count):
            f.write("host%d.%s A\n" % (i, DNS_DOMAIN))
    return path


def make_cert(tmp):
    """A self-signed RSA-2048 certificate; returns the path of one PEM holding cert and key
    (the form pen's -E without -K and HAProxy's `crt` both accept)."""
    key, cert, both = (os.path.join(tmp, n) for n in ("key.pem", "cert-only.pem", "cert.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(both, "w") as out:
        for part in (cert, key):
            with open(part) as f:
                out.write(f.read())
    return both
