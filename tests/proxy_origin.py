"""Test origin for tests/proxy.rs: sets cache headers on demand and counts the
requests it gets. Prints "PORT <n>" once listening on 127.0.0.1:0.

  /c/NAME?cc=VALUE      body "NAME #<count>", Cache-Control: VALUE (if given),
                        ETag "NAME"; answers 304 to a matching If-None-Match
                        (counted under "304 /c/NAME")
  /vary/NAME            Vary: Accept-Language, body echoes the language
  /echo                 the request line, headers and body (length and sum)
  /big?n=N&chunked=1    N bytes of 'x', chunked or with Content-Length
  /chunked              a small chunked body
  /slow?secs=S          answers after S seconds
  /sized/NAME?n=N       N bytes, max-age=3600
  /cookie/NAME?public=1 Set-Cookie: id=<count>, max-age=600 (and public)
  /stats                JSON: request counts by path (without the query), and
                        "connections": TCP connections accepted
"""
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

COUNTS = {}
LOCK = threading.Lock()


def count(key):
    with LOCK:
        COUNTS[key] = COUNTS.get(key, 0) + 1
        return COUNTS[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        count("connections")
        super().setup()

    def send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/stats":
            with LOCK:
                body = json.dumps(COUNTS).encode()
            return self.send(200, body, [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
        if path.startswith("/c/"):
            name = path[3:]
            etag = '"%s"' % name
            if self.headers.get("If-None-Match") == etag:
                count("304 " + path)
                return self.send(304, b"", [("ETag", etag)])
            n = count(path)
            hdrs = [("Content-Type", "text/plain"), ("ETag", etag)]
            if "cc" in q:
                hdrs.append(("Cache-Control", q["cc"]))
            return self.send(200, ("%s #%d" % (name, n)).encode(), hdrs)
        if path.startswith("/vary/"):
            n = count(path)
            lang = self.headers.get("Accept-Language", "none")
            return self.send(200, ("%s #%d" % (lang, n)).encode(),
                             [("Cache-Control", "max-age=3600"), ("Vary", "Accept-Language")])
        if path.startswith("/sized/"):
            count(path)
            return self.send(200, b"s" * int(q.get("n", "1000")), [("Cache-Control", "max-age=3600")])
        if path.startswith("/cookie/"):
            n = count(path)
            cc = "max-age=600" + (", public" if q.get("public") else "")
            return self.send(200, b"cookie #%d" % n, [("Cache-Control", cc), ("Set-Cookie", "id=%d" % n)])
        if path == "/echo":
            count(path)
            length = int(self.headers.get("Content-Length") or 0)
            h = hashlib.sha256()
            got = 0
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        break
                    piece = self.rfile.read(size)
                    self.rfile.readline()
                    h.update(piece)
                    got += size
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
            while got < length:
                piece = self.rfile.read(min(65536, length - got))
                if not piece:
                    break
                h.update(piece)
                got += len(piece)
            text = "%s %s\n%sbody %d %s\n" % (self.command, self.path, self.headers, got, h.hexdigest())
            return self.send(200, text.encode(), [("Content-Type", "text/plain"), ("Cache-Control", "no-store")])
        if path == "/big":
            count(path)
            n = int(q.get("n", "0"))
            block = b"x" * 65536
            self.send_response(200)
            if q.get("chunked"):
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(n))
            self.end_headers()
            left = n
            while left > 0:
                piece = block[: min(left, len(block))]
                if q.get("chunked"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                left -= len(piece)
            if q.get("chunked"):
                self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/chunked":
            count(path)
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/slow":
            count(path)
            time.sleep(float(q.get("secs", "1")))
            return self.send(200, b"slow", [("Cache-Control", q.get("cc", "no-store"))])
        self.send(404, b"no such path")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("PORT %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
