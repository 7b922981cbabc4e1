"""The blocking client: no Trio, no async, safe to share between threads.

trio-echo serve &
python clients/blocking_client.py [--host 127.0.0.1] [--port 7000]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import trio_echo


def main(host: str, port: int) -> None:
    with trio_echo.connect(host, port) as client:
        print("server:", client.server_info)
        print("echo:", client.call("echo", {"text": "hi", "bytes": b"\x00\xff", "n": [1, 2.5]}))
        print("ping:", client.call("ping"))

        # Errors are exceptions, one class per error code.
        try:
            client.call("no_such_method")
        except trio_echo.UnknownMethod as exc:
            print(f"UnknownMethod: code={exc.code!r} message={exc.message!r}")

        # timeout= travels to the server as timeout_ms and is enforced here too.
        try:
            client.call("sleep", 5, timeout=0.1)
        except trio_echo.DeadlineExceeded as exc:
            print("DeadlineExceeded:", exc)

        # Threads share the connection; their calls are in flight together.
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.call("sleep", 0.2), range(8)))
        print(f"8 threads x sleep(0.2) on one connection: {time.perf_counter() - start:.2f} s")

        stats = client.call("stats")
        print("requests in flight now:", stats["requests_in_flight"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=trio_echo.wire.DEFAULT_PORT)
    args = parser.parse_args()
    main(args.host, args.port)
