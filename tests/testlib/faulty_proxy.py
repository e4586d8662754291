"""A fault-injecting HTTP proxy on loopback, between the object-store clients (gcsfs,
tensorstore) and fake-gcs-server (``testlib/gcs.py``).

``FaultyProxy(upstream_url)`` listens on a free 127.0.0.1 port and forwards every
request to the emulator, except those a rule takes: a ``Fault`` matches a request by a
regular expression (below) and an optional method, and for its next ``times`` matches

The text a rule's regex searches is the request's URL-decoded path and query
(``/storage/v1/b/run/o/ckpt/8/...``, ``...?uploadType=media&name=ckpt/8/...``), plus, for
gcsfs's multipart uploads whose object name travels in the body, ``name=<object>``.

* ``status``: answers that HTTP status (503, 429, 401, ...) with ``Retry-After`` when
  ``retry_after`` is given, without forwarding;
* ``reset``: forwards nothing and closes the connection with a TCP reset (SO_LINGER 0);
* ``truncate``: forwards, then sends the headers and only the first half of the body
  (the ``Content-Length`` still announces all of it) and closes the connection;
* ``stall``: waits ``stall_s`` seconds, then forwards (or, with ``then="reset"``, resets).

``every`` > 1 takes only every n-th match (1st, n+1-th, ...), so a client's retry of
the same request goes through. Each rule counts what it did (``hits``); ``requests``
lists ``(method, path)`` of everything seen. ``env`` points gcsfs
(``STORAGE_EMULATOR_HOST``) and tensorstore (``TENSORSTORE_GCS_HTTP_URL``) at the proxy.
Location headers of resumable uploads are rewritten to the proxy, so every byte passes
through it. Nothing leaves loopback.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import re
import socket
import struct
import threading
import time
import urllib.parse


@dataclasses.dataclass
class Fault:
  """One rule; see the module docstring. ``hits`` counts the requests it took."""
  kind: str                      # "status" | "reset" | "truncate" | "stall"
  path: str = ".*"               # regex searched in the request's path + query
  method: str | None = None      # e.g. "POST"; None = any
  times: int = 1                 # how many matching requests it takes (-1 = all)
  every: int = 1                 # take the 1st, (every+1)-th, ... match
  status: int = 503
  retry_after: float | None = None
  stall_s: float = 0.0
  then: str = "forward"          # after a stall: "forward" | "reset"
  hits: int = 0
  seen: int = 0

  def take(self, method: str, path: str) -> bool:
    if (self.method and self.method != method) or not re.search(self.path, path):
      return False
    if self.times >= 0 and self.hits >= self.times:
      return False
    self.seen += 1
    if (self.seen - 1) % self.every:
      return False
    self.hits += 1
    return True


_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "content-length", "host"}


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  server: "_Server"

  def log_message(self, *args):   # quiet
    del args

  def _body(self) -> bytes:
    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
      out = b""
      while True:
        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
          while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
          return out
        out += self.rfile.read(size)
        self.rfile.readline()
    n = int(self.headers.get("Content-Length") or 0)
    return self.rfile.read(n) if n else b""

  def _reset(self) -> None:
    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    self.close_connection = True
    self.connection.close()

  def _forward(self, body: bytes):
    proxy = self.server.owner
    conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
    headers["Host"] = f"{proxy.upstream_host}:{proxy.upstream_port}"
    conn.request(self.command, self.path, body=body if body or self.command in (
        "POST", "PUT", "PATCH") else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    out_headers = []
    for k, v in resp.getheaders():
      if k.lower() in _HOP:
        continue
      out_headers.append((k, v.replace(proxy.upstream, proxy.url)))
    conn.close()
    return resp.status, resp.reason, out_headers, data

  def _send(self, status, reason, headers, data, *, truncate=False):
    self.send_response(status, reason)
    for k, v in headers:
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(data[:len(data) // 2] if truncate else data)
    self.wfile.flush()
    if truncate:                  # a clean close in the middle of the body
      self.close_connection = True
      self.connection.shutdown(socket.SHUT_WR)

  def _handle(self):
    body = self._body()
    proxy = self.server.owner
    subject = urllib.parse.unquote(self.path)
    if "multipart" in self.headers.get("Content-Type", ""):
      m = re.search(rb'"name": "([^"]*)"', body[:4096])
      if m:
        subject += " name=" + m.group(1).decode("utf-8", "replace")
    fault = proxy.match(self.command, subject)
    if fault is not None and fault.kind == "stall":
      time.sleep(fault.stall_s)
      if fault.then == "reset":
        return self._reset()
      fault = None
    if fault is not None and fault.kind == "reset":
      return self._reset()
    if fault is not None and fault.kind == "status":
      msg = (b'{"error": {"code": %d, "message": "injected by the test proxy"}}'
             % fault.status)
      headers = [("Content-Type", "application/json")]
      if fault.retry_after is not None:
        headers.append(("Retry-After", f"{fault.retry_after:g}"))
      return self._send(fault.status, "Injected", headers, msg)
    status, reason, headers, data = self._forward(body)
    self._send(status, reason, headers, data, truncate=fault is not None
               and fault.kind == "truncate")

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  owner: "FaultyProxy"

  def handle_error(self, request, client_address):
    del request, client_address   # a client that hung up (after a reset or truncation)


class FaultyProxy:
  """The proxy; ``faults`` is the live rule list (``add`` / ``clear`` while clients run)."""

  def __init__(self, upstream: str):
    u = urllib.parse.urlparse(upstream)
    self.upstream, self.upstream_host, self.upstream_port = upstream, u.hostname, u.port
    self.faults: list[Fault] = []
    self.requests: list[tuple[str, str]] = []   # (method, the text rules search)
    self._lock = threading.Lock()
    self.server = _Server(("127.0.0.1", 0), _Handler)
    self.server.owner = self
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()

  @property
  def env(self) -> dict:
    """The variables that point gcsfs and tensorstore at the proxy."""
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}

  def add(self, *faults: Fault) -> None:
    """Appends rules (the first rule that takes a request wins)."""
    with self._lock:
      self.faults.extend(faults)

  def clear(self) -> None:
    """Removes every rule: requests pass through."""
    with self._lock:
      self.faults.clear()

  def match(self, method: str, path: str) -> Fault | None:
    """Records the request; the rule that takes it, or None."""
    with self._lock:
      self.requests.append((method, path))
      for f in self.faults:
        if f.take(method, path):
          return f
    return None

  def stop(self) -> None:
    """Stops listening (a stalled handler thread is left to finish: a daemon)."""
    self.server.shutdown()
    self.server.server_close()
