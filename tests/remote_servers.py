"""HTTP servers for the remote-input tests: a real nginx, and a deliberately broken one.

nginx (from the Debian package; `.ci/run` installs it) serves the fixtures the way hubs and
CDNs do: byte ranges, a path that ignores them (`max_ranges 0`), redirects to the same and to
another origin (`localhost:<port2>` vs `127.0.0.1:<port>`: another host for a credential), a
path that wants a bearer token, and the hub's `/ORG/REPO/resolve/REV/PATH` layout. Its access
log records, per request, the port, status, body bytes and whether an Authorization header
came: the tests count requests and bytes there, and check where a token went.

`FaultServer` (http.server in a thread) breaks the protocol on purpose: a wrong
Content-Range, a truncated body, 503 before success, a redirect loop, a redirect to ftp://,
a body never sent, a 200 without a length, a gzip body, any status code.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

TOKEN = "sa3ckpt-test-token-7f3a9c"
"""The bearer token the authenticated locations accept (a test value, not a secret)."""

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, however it dies (Linux prctl), so a
    killed test session leaves no nginx behind; elsewhere `stop` is the only way."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {log.read_text() if log.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start listening")


_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
  log_format counted '$server_port $request_method $uri $status $body_bytes_sent $has_auth';
  access_log {prefix}/access.log counted;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  default_type application/octet-stream;
  keepalive_requests 100000;
  map $http_authorization $auth_ok {{ default 0; "Bearer {token}" 1; }}
  map $http_authorization $has_auth {{ default auth; "" noauth; }}
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location /files/ {{ }}
    location /norange/ {{ max_ranges 0; alias {root}/files/; }}
    location /private/ {{
      if ($auth_ok = 0) {{ return 401; }}
      alias {root}/files/;
    }}
    location /same/ {{ rewrite ^/same/(.*)$ /files/$1 redirect; }}
    location /other/ {{ rewrite ^/other/(.*)$ http://localhost:{port2}/files/$1 redirect; }}
    location /private-other/ {{
      if ($auth_ok = 0) {{ return 401; }}
      rewrite ^/private-other/(.*)$ http://localhost:{port2}/files/$1 redirect;
    }}
    location ~ ^/org/cdn/resolve/([^/]+)/(.*)$ {{
      if ($auth_ok = 0) {{ return 401; }}
      return 302 http://localhost:{port2}/hub/org/cdn/$1/$2;
    }}
    location ~ ^/([^/]+)/([^/]+)/resolve/([^/]+)/(.*)$ {{ alias {root}/hub/$1/$2/$3/$4; }}
  }}
  server {{
    listen 127.0.0.1:{port2};
    root {root};
    location /files/ {{ }}
    location /hub/ {{ }}
  }}
{tls}}}
"""

_TLS = """
  server {{
    listen 127.0.0.1:{port3} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {root};
    location /files/ {{ }}
  }}
"""

OPENSSL = shutil.which("openssl")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (and its key), made by openssl."""
    assert OPENSSL is not None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class LogLine:
    port: int
    method: str
    uri: str
    status: int
    bytes: int
    auth: bool


class Nginx:
    """nginx serving `root` (files/, hub/) on two ports of 127.0.0.1, stopped by `stop`."""

    def __init__(self, root: Path, prefix: Path, tls: tuple[Path, Path] | None = None) -> None:
        assert NGINX is not None
        self.root, self.prefix = root, prefix
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.port, self.port2, self.port3 = free_port(), free_port(), free_port()
        self.cert = tls[0] if tls else None
        tls_server = (
            _TLS.format(port3=self.port3, cert=tls[0], key=tls[1], root=root) if tls else ""
        )
        conf = prefix / "nginx.conf"
        conf.write_text(
            _CONF.format(
                prefix=prefix,
                root=root,
                port=self.port,
                port2=self.port2,
                token=TOKEN,
                tls=tls_server,
            )
        )
        self.log = prefix / "access.log"
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        try:
            _wait_listening(self.port, self.proc, prefix / "error.log")
            _wait_listening(self.port2, self.proc, prefix / "error.log")
            if tls:
                _wait_listening(self.port3, self.proc, prefix / "error.log")
        except BaseException:
            self.stop()
            raise

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def mark(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def since(self, mark: int, at_least: int = 1) -> list[LogLine]:
        """The requests logged after `mark`. nginx writes a line when it finalises a request,
        which for a connection the client dropped can come just after the client returned:
        wait (bounded) until `at_least` lines are there, then return all of them."""
        deadline = time.monotonic() + 10
        while True:
            lines = self._read(mark)
            if len(lines) >= at_least or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def _read(self, mark: int) -> list[LogLine]:
        with open(self.log, "rb") as f:
            f.seek(mark)
            text = f.read().decode()
        lines = []
        for row in text.splitlines():
            port, method, uri, status, size, auth = row.split(" ")
            lines.append(LogLine(int(port), method, uri, int(status), int(size), auth == "auth"))
        return lines

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def _send(self, code: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _range(self, size: int) -> tuple[int, int] | None:
        value = self.headers.get("Range", "")
        if not value.startswith("bytes="):
            return None
        first, _, last = value[len("bytes=") :].partition("-")
        return int(first), min(int(last) if last else size - 1, size - 1)

    def _serve(self, data: bytes) -> None:
        span = self._range(len(data))
        if span is None:
            self._send(200, {"Content-Length": str(len(data))}, data)
            return
        first, last = span
        body = data[first : last + 1]
        headers = {"Content-Length": str(len(body))}
        headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        self._send(206, headers, body)

    def do_GET(self) -> None:
        server = self.server
        path = self.path.split("?", 1)[0]
        server.hits[path] += 1
        server.auth_seen[path].append(self.headers.get("Authorization"))
        data = server.payload
        if path == "/ok.safetensors":
            self._serve(data)
        elif path == "/wrong-range.safetensors":
            body = data[5:15]
            headers = {"Content-Length": "10", "Content-Range": f"bytes 5-14/{len(data)}"}
            self._send(206, headers, body)
        elif path == "/truncated.safetensors":
            first, last = self._range(len(data)) or (0, len(data) - 1)
            body = data[first : last + 1]
            headers = {
                "Content-Length": str(len(body)),
                "Content-Range": f"bytes {first}-{last}/{len(data)}",
                "Connection": "close",
            }
            self._send(206, headers, body[: len(body) // 2])
            self.close_connection = True
        elif path.startswith("/flaky/"):
            if server.hits[path] <= server.failures:
                self._send(503, {"Content-Length": "0"})
            else:
                self._serve(data)
        elif path == "/always-503.safetensors":
            self._send(503, {"Content-Length": "0"})
        elif path.startswith("/status/"):
            code = int(path.split("/")[2].split(".")[0])
            self._send(code, {"Content-Length": "0"})
        elif path == "/loop.safetensors":
            self._send(302, {"Location": "/loop.safetensors", "Content-Length": "0"})
        elif path == "/to-ftp.safetensors":
            self._send(302, {"Location": "ftp://127.0.0.1/x.safetensors", "Content-Length": "0"})
        elif path == "/hang.safetensors":
            server.stopping.wait(60)
        elif path == "/no-length.safetensors":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
        elif path == "/gzip.safetensors":
            headers = {"Content-Encoding": "gzip", "Content-Length": str(len(data))}
            self._send(200, headers, data)
        elif path == "/bigger-body.safetensors":  # 206 that sends more than it announced
            first, last = self._range(len(data)) or (0, len(data) - 1)
            headers = {
                "Content-Length": str(len(data) - first),
                "Content-Range": f"bytes {first}-{last}/{len(data)}",
            }
            self._send(206, headers, data[first:])
        else:
            self._send(404, {"Content-Length": "0"})


class FaultServer(http.server.ThreadingHTTPServer):
    """A misbehaving HTTP server on 127.0.0.1 serving `payload` under its fault paths."""

    daemon_threads = True

    def __init__(self, payload: bytes, failures: int = 2) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payload = payload
        self.failures = failures
        self.hits: defaultdict[str, int] = defaultdict(int)
        self.auth_seen: defaultdict[str, list[str | None]] = defaultdict(list)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path.lstrip('/')}"

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: clients drop connections mid-body on purpose (that is what is tested), and
        socketserver would print each broken pipe on the test's stderr."""

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class Unanswered:
    """A listening socket that never accepts, its queue filled: connecting to it times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = int(self.sock.getsockname()[1])
        self.fillers = []
        for _ in range(4):  # fill the accept queue; further SYNs are dropped
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", self.port))
            self.fillers.append(s)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()
