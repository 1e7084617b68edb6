#!/usr/bin/env python3
"""The metrics collector written the reference material's way (exercise 4 with
its section 3.3 UDPServer): socketserver.UDPServer, one BaseRequestHandler call
per datagram, each `metric:value:timestamp` line checked and appended to a file.
The baseline bench/metrics_ingest.sh compares forkserve's collector with.

Usage: py_metrics_collector.py PORT FILE
"""
import socketserver
import sys
import time


class MetricsHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data, _sock = self.request
        good = []
        for line in data.decode("utf-8", "replace").split("\n"):
            parts = line.strip().split(":")
            if len(parts) not in (2, 3) or not parts[0]:
                continue
            try:
                value = float(parts[1])
                ts = float(parts[2]) if len(parts) == 3 and parts[2] else time.time()
            except ValueError:
                continue
            good.append(f"{parts[0]}:{value}:{ts}\n")
        with open(self.server.path, "a") as f:
            f.writelines(good)


class MetricsServer(socketserver.UDPServer):
    allow_reuse_address = True

    def __init__(self, addr, path):
        self.path = path
        super().__init__(addr, MetricsHandler)


if __name__ == "__main__":
    port, path = int(sys.argv[1]), sys.argv[2]
    with MetricsServer(("127.0.0.1", port), path) as server:
        print(f"listening on udp:127.0.0.1:{port}", flush=True)
        server.serve_forever()
