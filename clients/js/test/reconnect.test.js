// Version 2 and reconnection (protocol.md §11), against scripted fake servers
// on loopback, so that each rule can be exercised on its own: the fallback to
// version 1, goaway, "unavailable" retries, a lost connection, reconnect: false.

import assert from "node:assert/strict";
import net from "node:net";
import { once } from "node:events";
import { test } from "node:test";
import { decode } from "@msgpack/msgpack";

import {
  ConnectionClosed,
  RemoteError,
  UNAVAILABLE_RETRIES,
  connect,
  encodeFrame,
} from "../trio_echo.js";

const MAGIC = Buffer.from([0x00, 0x54, 0x45, 0x43, 0x48, 0x4f, 0x00]);

/** One connection to the fake server: its version, the frames it got, and helpers. */
class FakeConnection {
  constructor(socket, index) {
    this.socket = socket;
    this.index = index;
    this.version = null;
    this.requests = [];
    this.gotEof = new Promise((resolve) => socket.once("end", resolve));
    this.closed = new Promise((resolve) => socket.once("close", resolve));
  }

  send(message) {
    this.socket.write(encodeFrame(message));
  }

  reply(msgid, result) {
    this.send([1, msgid, null, result]);
  }

  error(msgid, code, message = code) {
    this.send([1, msgid, { code, message }, null]);
  }

  goaway(reason = "shutdown", graceMs = 5000) {
    this.send([2, "goaway", [{ reason, grace_ms: graceMs }]]);
  }
}

/**
 * A server that speaks just enough of the protocol: the preamble of the
 * versions it knows, a hello naming the connection's index, and requests
 * handed to `onRequest(conn, msgid, method, params)`.
 */
class FakeServer {
  constructor({ versions = [1, 2], onRequest = (c, id, m, p) => c.reply(id, p[0]) } = {}) {
    this.versions = versions;
    this.onRequest = onRequest;
    this.connections = [];
    this.newConnection = null;
    this.server = net.createServer({ allowHalfOpen: true }, (socket) => this.serve(socket));
  }

  async listen(port = 0) {
    this.server.listen(port, "127.0.0.1");
    await once(this.server, "listening");
    this.port = this.server.address().port;
    return this;
  }

  async close() {
    for (const conn of this.connections) conn.socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** Resolves with the next connection past its preamble. */
  nextConnection() {
    return new Promise((resolve) => {
      this.newConnection = resolve;
    });
  }

  serve(socket) {
    const conn = new FakeConnection(socket, this.connections.length);
    let buffer = Buffer.alloc(0);
    socket.on("error", () => {});
    socket.on("data", (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (conn.version === null) {
        if (buffer.length < 8) return;
        assert.deepEqual(buffer.subarray(0, 7), MAGIC);
        const version = buffer[7];
        buffer = buffer.subarray(8);
        if (!this.versions.includes(version)) {
          const notice = { code: "unsupported_version", message: `no version ${version}` };
          socket.end(encodeFrame([2, "error", [notice]]));
          return;
        }
        conn.version = version;
        this.connections.push(conn);
        conn.send([2, "hello", [{ protocol: version, server: "fake", index: conn.index }]]);
        this.newConnection?.(conn);
        this.newConnection = null;
      }
      while (buffer.length >= 4 && buffer.length >= 4 + buffer.readUInt32BE(0)) {
        const length = buffer.readUInt32BE(0);
        const message = decode(buffer.subarray(4, 4 + length));
        buffer = buffer.subarray(4 + length);
        if (message[0] === 0) {
          conn.requests.push(message);
          this.onRequest(conn, message[1], message[2], message[3]);
        }
      }
    });
  }
}

test("offers version 2 and falls back to version 1 on an older server", async () => {
  const server = await new FakeServer({ versions: [1] }).listen();
  const client = await connect("127.0.0.1", server.port);
  try {
    assert.equal(client.serverInfo.protocol, 1);
    assert.equal(await client.call("echo", "hi"), "hi");
    assert.equal(server.connections.length, 1); // the v2 attempt was refused before its hello
  } finally {
    client.close();
    await server.close();
  }
});

test("goaway: new calls move to a new connection, pending ones finish on the old", async () => {
  const held = [];
  const server = await new FakeServer({
    onRequest: (conn, msgid, method, params) =>
      method === "slow" ? held.push([conn, msgid]) : conn.reply(msgid, params[0]),
  }).listen();
  const client = await connect("127.0.0.1", server.port);
  try {
    const slow = client.call("slow");
    await waitFor(() => held.length === 1);
    const [old] = server.connections;
    old.goaway("max_age", 5000);
    // The client half-closes the old connection as soon as it has read the goaway.
    await old.gotEof;
    const next = server.nextConnection();
    assert.equal(await client.call("echo", "after"), "after");
    const fresh = await next;
    assert.equal(fresh.requests.length, 1);
    assert.equal(client.serverInfo.index, 1); // serverInfo follows the current connection
    const [[conn, msgid]] = held;
    conn.reply(msgid, "finished");
    assert.equal(await slow, "finished");
    assert.equal(old.requests.length, 1);
  } finally {
    client.close();
    await server.close();
  }
});

test("a call answered unavailable is sent again on the new connection", async () => {
  const server = await new FakeServer({
    onRequest: (conn, msgid, method, params) => {
      if (conn.index === 0) {
        conn.goaway();
        conn.error(msgid, "unavailable");
      } else conn.reply(msgid, params[0]);
    },
  }).listen();
  const client = await connect("127.0.0.1", server.port);
  try {
    assert.equal(await client.request("echo", ["again"], { timeoutMs: 5000 }), "again");
    assert.deepEqual(
      server.connections.map((c) => c.requests.length),
      [1, 1],
    );
    // The retry carries what is left of the call's own deadline.
    const timeoutMs = server.connections[1].requests[0][4].timeout_ms;
    assert.ok(timeoutMs > 0 && timeoutMs <= 5000, timeoutMs);
  } finally {
    client.close();
    await server.close();
  }
});

test("unavailable is retried a bounded number of times, then raised", async () => {
  const server = await new FakeServer({
    onRequest: (conn, msgid) => {
      conn.goaway();
      conn.error(msgid, "unavailable");
    },
  }).listen();
  const client = await connect("127.0.0.1", server.port);
  try {
    await assert.rejects(client.call("echo", 1), (error) => {
      assert.ok(error instanceof RemoteError);
      assert.equal(error.code, "unavailable");
      return true;
    });
    const sent = server.connections.reduce((n, c) => n + c.requests.length, 0);
    assert.equal(sent, 1 + UNAVAILABLE_RETRIES);
  } finally {
    client.close();
    await server.close();
  }
});

test("a lost connection fails its pending calls; the next call reconnects", async () => {
  const server = await new FakeServer({
    onRequest: (conn, msgid, method, params) => {
      if (method === "crash") conn.socket.destroy();
      else conn.reply(msgid, params[0]);
    },
  }).listen();
  const client = await connect("127.0.0.1", server.port);
  try {
    await assert.rejects(client.call("crash"), ConnectionClosed);
    assert.equal(await client.call("echo", "back"), "back");
    assert.equal(server.connections.length, 2);
  } finally {
    client.close();
    await server.close();
  }
});

test("reconnects with backoff while the server is down, within connectTimeoutMs", async () => {
  const server = await new FakeServer().listen();
  const port = server.port;
  const client = await connect("127.0.0.1", port, { connectTimeoutMs: 5000 });
  try {
    await server.close(); // the connection is lost and new ones are refused
    await waitFor(() => !client.current.usable);
    const call = client.call("echo", "later");
    await new Promise((resolve) => setTimeout(resolve, 300));
    const again = await new FakeServer().listen(port);
    try {
      assert.equal(await call, "later");
    } finally {
      client.close();
      await again.close();
    }
  } finally {
    client.close();
  }
});

test("gives up after connectTimeoutMs when the server stays down", async () => {
  const server = await new FakeServer().listen();
  const client = await connect("127.0.0.1", server.port, { connectTimeoutMs: 300 });
  await server.close();
  await waitFor(() => !client.current.usable);
  const started = Date.now();
  await assert.rejects(client.call("echo", 1), ConnectionClosed);
  const took = Date.now() - started;
  assert.ok(took >= 250 && took < 3000, took);
  client.close();
});

test("reconnect: false keeps a lost or retiring connection final", async () => {
  const held = [];
  const server = await new FakeServer({
    onRequest: (conn, msgid, method, params) =>
      method === "slow" ? held.push(msgid) : conn.reply(msgid, params[0]),
  }).listen();
  const client = await connect("127.0.0.1", server.port, { reconnect: false });
  try {
    const slow = client.call("slow");
    await waitFor(() => held.length === 1);
    server.connections[0].goaway();
    await server.connections[0].gotEof;
    await assert.rejects(client.call("echo", 1), ConnectionClosed);
    server.connections[0].reply(held[0], "done");
    assert.equal(await slow, "done");
    assert.equal(server.connections.length, 1);
  } finally {
    client.close();
    await server.close();
  }
});

/** Poll a condition (a fake server offers no event for it), bounded in time. */
async function waitFor(condition, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
