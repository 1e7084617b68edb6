"""The Python peers of bench/compare.sh: socketserver's forking servers with the
reference handlers. Usage: pyserver.py tcp PORT | unix PATH | udp PORT

tcp/unix: ForkingTCPServer / ForkingUnixStreamServer, each line sent back
upper-cased until the client closes. udp: ForkingUDPServer answering every datagram
with "Server time: YYYY-MM-DD HH:MM:SS". Settings are socketserver's defaults except
a listen backlog of 1024 and max_children 100, the limits every server in the
comparison gets."""
import os
import socketserver
import sys
import time


# Python 3.12 defines it; older versions compose it the same way.
ForkingUnixStreamServer = getattr(
    socketserver,
    "ForkingUnixStreamServer",
    type("ForkingUnixStreamServer", (socketserver.ForkingMixIn, socketserver.UnixStreamServer), {}),
)


class Upper(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())


class Time(socketserver.BaseRequestHandler):
    def handle(self):
        _data, sock = self.request
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sock.sendto(f"Server time: {stamp}".encode(), self.client_address)


class Tuned:
    allow_reuse_address = True
    request_queue_size = 1024
    max_children = 100


class TCP(Tuned, socketserver.ForkingTCPServer):
    pass


class Unix(Tuned, ForkingUnixStreamServer):
    pass


class UDP(Tuned, socketserver.ForkingUDPServer):
    pass


def main():
    kind, where = sys.argv[1], sys.argv[2]
    if kind == "tcp":
        server = TCP(("127.0.0.1", int(where)), Upper)
    elif kind == "unix":
        if os.path.exists(where):
            os.unlink(where)
        server = Unix(where, Upper)
    elif kind == "udp":
        server = UDP(("127.0.0.1", int(where)), Time)
    else:
        sys.exit("usage: pyserver.py tcp PORT | unix PATH | udp PORT")
    server.serve_forever()


if __name__ == "__main__":
    main()
