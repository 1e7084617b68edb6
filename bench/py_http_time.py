#!/usr/bin/env python3
"""The peer for benchmarking `forkserve http`: Python's http.server with
socketserver.ForkingMixIn (a forked child per connection), answering /time with the
same JSON as forkserve ({"timestamp": "YYYY-MM-DD HH:MM:SS"}) and 404 elsewhere.

    python3 bench/py_http_time.py [PORT] [BACKLOG]

PORT defaults to 8081; BACKLOG to socketserver's default (5). One access-log line
per request goes to stderr, as with forkserve.
"""

import http.server
import json
import socketserver
import sys
import time


class S(socketserver.ForkingMixIn, http.server.HTTPServer):
    pass


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/time":
            self.send_error(404)
            return
        body = (json.dumps({"timestamp": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    if len(sys.argv) > 2:
        S.request_queue_size = int(sys.argv[2])
    with S(("127.0.0.1", port), Handler) as server:
        print(f"listening on 127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
