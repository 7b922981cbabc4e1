// Version 2 against the real server: a server started with --max-connection-age
// retires each connection after ~0.3 s with a goaway; the client follows it to
// a new connection and sends again what was answered "unavailable", so that
// calls made all along never fail (protocol.md §11).
//
// It starts its own server: `python3 -m trio_echo serve` (TRIO_ECHO_PYTHON
// overrides python3; tests/e2e/test_js_client.py sets it).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";

import { connect } from "../trio_echo.js";

let server = null;
let port = 0;

before(async () => {
  const python = process.env.TRIO_ECHO_PYTHON ?? "python3";
  server = spawn(
    python,
    ["-m", "trio_echo", "serve", "--port", "0", "--max-connection-age", "0.3", "--grace", "5"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  port = await new Promise((resolve, reject) => {
    let log = "";
    server.stderr.on("data", (chunk) => {
      log += chunk;
      const match = /listening on \S+?:(\d+)/.exec(log);
      if (match) resolve(Number(match[1]));
    });
    server.on("exit", (code) => reject(new Error(`server exited (${code}): ${log}`)));
  });
});

after(() => server?.kill("SIGTERM"));

test("calls ride through the server's goaways without a failure", async () => {
  const client = await connect("127.0.0.1", port);
  try {
    assert.equal(client.serverInfo.protocol, 2);
    const deadline = Date.now() + 1500;
    const loops = Array.from({ length: 4 }, async (_, t) => {
      let n = 0;
      while (Date.now() < deadline) {
        assert.deepEqual(await client.call("echo", [t, n]), [t, n]);
        n += 1;
      }
      return n;
    });
    const counts = await Promise.all(loops);
    assert.ok(counts.every((n) => n > 0), counts);
    const stats = await client.call("stats");
    assert.ok(stats.connections_total >= 3, JSON.stringify(stats));
    assert.ok((stats.goaways.max_age ?? 0) >= 2, JSON.stringify(stats.goaways));
  } finally {
    client.close();
  }
});
