#!/usr/bin/env bash
# Talking to trio-echo with netcat (OpenBSD nc, for its -N: half-close on EOF).
#
#   trio-echo serve &          # 127.0.0.1:7000, auto mode
#   clients/netcat.sh [HOST] [PORT]
#
# Any opening that is not the framed preamble and does not start with 0x93/0x94
# is raw echo (compat mode): every byte comes back unchanged.
set -euo pipefail
HOST=${1:-127.0.0.1}
PORT=${2:-7000}

echo "# 1. a line of text comes back as it was"
printf 'hello\n' | nc -N "$HOST" "$PORT"

echo "# 2. any bytes, any size: 1 MiB of random data round-trips unchanged"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# (After a plain first byte: bare random data starts with 0x93/0x94, msgpack-rpc, 1 in 128.)
{ printf 'R'; head -c 1048575 /dev/urandom; } >"$tmp"
nc -N "$HOST" "$PORT" <"$tmp" | cmp - "$tmp" && echo "identical"

echo "# 3. a plain msgpack-rpc request (first byte 0x94): echo(\"hi\") with msgid 1"
# [0, 1, "echo", ["hi"]] -> the reply [1, 1, nil, "hi"] is 94 01 01 c0 a2 68 69
printf '\x94\x00\x01\xa4echo\x91\xa2hi' | nc -N "$HOST" "$PORT" | od -An -tx1

echo "# 4. the framed preamble: the server's first frame is its hello"
# 00 54 45 43 48 4f 00 01, then EOF: the server sends its hello and closes.
printf '\x00TECHO\x00\x01' | nc -N "$HOST" "$PORT" | od -An -c
