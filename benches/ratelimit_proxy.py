#!/usr/bin/env python3
"""A TCP proxy that caps the bytes it sends to clients (one token bucket shared by every
connection, as a link to the registry would) and counts them.

    ratelimit_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT RATE_BYTES_PER_S STATS_FILE

STATS_FILE holds the bytes sent to clients so far, rewritten every 50 ms.
"""
import os
import socket
import sys
import threading
import time

CHUNK = 16 << 10


class Bucket:
    def __init__(self, rate):
        self.rate = float(rate)
        self.tokens = 0.0
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n):
        while True:
            with self.lock:
                now = time.monotonic()
                # At most 50 ms of burst.
                self.tokens = min(self.tokens + (now - self.last) * self.rate, self.rate / 20)
                self.last = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                wait = (n - self.tokens) / self.rate
            time.sleep(wait)


def pump(src, dst, bucket, counter):
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            if bucket is not None:
                bucket.take(len(data))
                with counter[1]:
                    counter[0] += len(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    port, upstream, rate, stats = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    host, uport = upstream.rsplit(":", 1)
    bucket = Bucket(rate)
    counter = [0, threading.Lock()]

    def report():
        while True:
            with counter[1]:
                n = counter[0]
            with open(stats + ".tmp", "w") as f:
                f.write(str(n))
            os.replace(stats + ".tmp", stats)
            time.sleep(0.05)

    threading.Thread(target=report, daemon=True).start()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(128)
    while True:
        client, _ = ls.accept()
        up = socket.create_connection((host, int(uport)))
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, up, None, counter), daemon=True).start()
        threading.Thread(target=pump, args=(up, client, bucket, counter), daemon=True).start()


if __name__ == "__main__":
    main()
