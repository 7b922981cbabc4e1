// The JS client against a live trio_echo server.
//
// Uses the server at TRIO_ECHO_HOST:TRIO_ECHO_PORT when TRIO_ECHO_PORT is set
// (tests/e2e/test_js_client.py does that); otherwise starts
// `python3 -m trio_echo serve --port 0` (TRIO_ECHO_PYTHON overrides python3).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import {
  ConnectionClosed,
  RemoteError,
  connect,
  encodeFrame,
  PREAMBLE,
  PREAMBLE_V2,
} from "../trio_echo.js";

let host = process.env.TRIO_ECHO_HOST ?? "127.0.0.1";
let port = Number(process.env.TRIO_ECHO_PORT ?? 0);
let server = null;
let client = null;

before(async () => {
  if (!port) port = await startServer();
  client = await connect(host, port);
});

after(() => {
  client?.close();
  server?.kill("SIGTERM");
});

function startServer() {
  return new Promise((resolve, reject) => {
    const python = process.env.TRIO_ECHO_PYTHON ?? "python3";
    server = spawn(python, ["-m", "trio_echo", "serve", "--host", host, "--port", "0"], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    server.stderr.on("data", (chunk) => {
      log += chunk;
      const match = /listening on \S+?:(\d+)/.exec(log);
      if (match) resolve(Number(match[1]));
    });
    server.on("exit", (code) => reject(new Error(`server exited (${code}): ${log}`)));
  });
}

/** The bytes of a hex test vector in protocol.md's Appendix A. */
function vector(name) {
  const doc = readFileSync(new URL("../../../protocol.md", import.meta.url), "utf8");
  const match = new RegExp("```hex name=" + name + " [^\\n]*\\n([^`]*)```").exec(doc);
  assert.ok(match, `no vector ${name} in protocol.md`);
  return Buffer.from(match[1].replace(/\s+/g, ""), "hex");
}

test("frames match protocol.md's test vectors", () => {
  assert.deepEqual(Buffer.from(PREAMBLE), vector("preamble"));
  assert.deepEqual(Buffer.from(PREAMBLE_V2), vector("preamble-v2"));
  assert.deepEqual(encodeFrame([0, 1, "echo", ["hi"]]), vector("request"));
  assert.deepEqual(encodeFrame([0, 3, "echo", [Uint8Array.from([0, 255])]]), vector("request-bin"));
  assert.deepEqual(encodeFrame([3, 2]), vector("cancel"));
});

test("the hello arrives before connect resolves, for version 2", () => {
  assert.equal(client.serverInfo.protocol, 2);
  assert.equal(typeof client.serverInfo.max_frame, "number");
});

test("framed echo keeps str as str and bytes as bytes", async () => {
  assert.equal(await client.call("echo", "héllo"), "héllo");
  const bytes = Uint8Array.from([0, 255, 1, 2]);
  const echoed = await client.call("echo", bytes);
  assert.ok(echoed instanceof Uint8Array);
  assert.deepEqual([...echoed], [...bytes]);
  assert.deepEqual(await client.call("echo", { a: [1, 2.5, null] }), { a: [1, 2.5, null] });
  assert.equal(await client.call("ping"), "pong");
});

test("replies come back out of order on one connection", async () => {
  const order = [];
  const slow = client.call("sleep", 0.2).then(() => order.push("slow"));
  const fast = client.call("echo", "fast").then((v) => order.push(v));
  await Promise.all([slow, fast]);
  assert.deepEqual(order, ["fast", "slow"]);
});

test("many calls in flight at once", async () => {
  const values = Array.from({ length: 200 }, (_, i) => [i, "x".repeat(i)]);
  assert.deepEqual(await Promise.all(values.map((v) => client.call("echo", v))), values);
});

test("errors carry their code", async () => {
  await assert.rejects(client.call("no_such_method"), (error) => {
    assert.ok(error instanceof RemoteError);
    assert.equal(error.code, "unknown_method");
    return true;
  });
  await assert.rejects(client.call("sleep", -1), { code: "invalid_params" });
  await assert.rejects(client.request("sleep", [10], { timeoutMs: 50 }), { code: "timeout" });
});

test("aborting a call sends a cancel and drops the late reply", async () => {
  const controller = new AbortController();
  const call = client.request("sleep", [10], { signal: controller.signal });
  controller.abort(new Error("gave up"));
  await assert.rejects(call, { message: "gave up" });
  assert.equal(await client.call("echo", "after"), "after");
});

test("a refused connection rejects, and a closed client fails its calls", async () => {
  await assert.rejects(connect(host, 1), { code: "ECONNREFUSED" });
  const other = await connect(host, port);
  const pending = other.call("sleep", 10);
  other.close();
  await assert.rejects(pending, ConnectionClosed);
});

// --- server streams (§12) -------------------------------------------------------

test("a server stream's request and credit match protocol.md's vectors", () => {
  const request = [0, 1, "ticks", [3, 0], { stream: "server", credit: 2 }];
  assert.deepEqual(encodeFrame(request), vector("request-server-stream"));
  assert.deepEqual(encodeFrame([5, 1, 8]), vector("credit"));
});

test("a server stream is an async iterator, its result nil", async () => {
  const stream = client.stream("ticks", [5, 0]);
  const items = [];
  for await (const item of stream) items.push(item);
  assert.deepEqual(items, [0, 1, 2, 3, 4]);
  assert.equal(stream.result, null);
});

test("credit is granted as items are consumed: a window of 2 carries 200 items", async () => {
  const items = [];
  for await (const item of client.stream("ticks", [200, 0], { window: 2 })) items.push(item);
  assert.equal(items.length, 200);
  assert.equal(items[199], 199);
});

test("leaving a stream early cancels it on the server", async () => {
  const before = (await client.call("stats")).errors.cancelled ?? 0;
  for await (const item of client.stream("ticks", [1000000, 0])) {
    if (item === 2) break;
  }
  for (let i = 0; i < 200; i++) {
    const stats = await client.call("stats");
    if ((stats.errors.cancelled ?? 0) > before) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.fail("the server never saw the cancel");
});

test("a stream's error rejects the loop; an abort cancels it", async () => {
  await assert.rejects(
    async () => {
      for await (const item of client.stream("sum")) assert.fail(`got ${item}`);
    },
    (error) => error instanceof RemoteError && error.code === "invalid_params",
  );
  const controller = new AbortController();
  const items = [];
  await assert.rejects(async () => {
    for await (const item of client.stream("ticks", [10, 5], { signal: controller.signal })) {
      items.push(item);
      controller.abort(new Error("enough"));
    }
  }, /enough/);
  assert.deepEqual(items, [0]);
  assert.equal(await client.call("ping"), "pong");
});
