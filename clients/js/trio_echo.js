// A small Node.js client for the trio_echo wire protocol, written from
// protocol.md only (Appendix B is the recipe): preamble, hello, length-prefixed
// msgpack frames, msgids matched to callers, cancel on abort, error codes, and
// version 2 (§11): it offers version 2 and falls back to 1, follows a server's
// goaway to a new connection, retries calls answered "unavailable", and
// reconnects after a lost connection; and server streams (§12) as async
// iterators, with credit granted as the loop consumes items.
//
//   import { connect } from "./trio_echo.js";
//   const client = await connect("127.0.0.1", 7000);
//   await client.call("echo", "hi");                          // -> "hi"
//   await client.request("sleep", [5], { timeoutMs: 100 });   // rejects, code "timeout"
//   for await (const tick of client.stream("ticks", [3, 0.1])) console.log(tick);  // 0 1 2
//   client.close();

import net from "node:net";
import tls from "node:tls";
import { decode, encode } from "@msgpack/msgpack";

/** §2.1: magic "\x00TECHO\x00" then the version byte. */
const MAGIC = [0x00, 0x54, 0x45, 0x43, 0x48, 0x4f, 0x00];
/** The version 1 preamble (§2.1). */
export const PREAMBLE = Uint8Array.from([...MAGIC, 0x01]);
/** The version 2 preamble (§11.1). */
export const PREAMBLE_V2 = Uint8Array.from([...MAGIC, 0x02]);
/** §5: msgids are uint32. */
const MSGID_LIMIT = 2 ** 32;
/** §3: our own receive limit (the server's max_frame only bounds what it accepts). */
const MAX_RECEIVE_FRAME = 64 * 1024 * 1024;
/** §11.4: how many times a call answered "unavailable" is sent again. */
export const UNAVAILABLE_RETRIES = 3;
/** Reconnecting after a lost connection: 50 ms, doubling, at most 5 s, ±20 % jitter. */
const BACKOFF_FIRST_MS = 50;
const BACKOFF_MAX_MS = 5000;

const REQUEST = 0;
const RESPONSE = 1;
const NOTIFICATION = 2;
const CANCEL = 3;
const ITEMS = 4; // §12.2, version 2 only
const CREDIT = 5;
/** §12.3: the credit a server stream starts with; half of it is granted again as it is consumed. */
export const STREAM_WINDOW = 128;

/** The server answered with an error (§4.3); `code` is one of the §6 codes. */
export class RemoteError extends Error {
  constructor(code, message, data) {
    super(`${code}: ${message}`);
    this.name = "RemoteError";
    this.code = code;
    this.remoteMessage = message;
    this.data = data;
  }
}

/** The connection ended (§7); every call still waiting fails with this. */
export class ConnectionClosed extends Error {
  constructor(message) {
    super(message);
    this.name = "ConnectionClosed";
  }
}

/** Internal: a connection that got goaway takes no new call (§11.4). */
class GoingAway extends Error {}

/** One frame (§3): a 4-byte big-endian body length, then one msgpack object. */
export function encodeFrame(message) {
  const body = encode(message);
  const frame = Buffer.allocUnsafe(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  frame.set(body, 4);
  return frame;
}

/** Splits a byte stream into decoded frames. */
class FrameReader {
  constructor() {
    this.buffer = Buffer.alloc(0);
  }

  /** Add bytes; return the decoded message of every frame they complete. */
  feed(chunk) {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    const messages = [];
    let offset = 0;
    while (this.buffer.length - offset >= 4) {
      const length = this.buffer.readUInt32BE(offset);
      if (length > MAX_RECEIVE_FRAME) {
        throw new ConnectionClosed(`frame of ${length} bytes is larger than we accept`);
      }
      if (this.buffer.length - offset - 4 < length) break;
      messages.push(decode(this.buffer.subarray(offset + 4, offset + 4 + length)));
      offset += 4 + length;
    }
    this.buffer = this.buffer.subarray(offset);
    return messages;
  }
}

/** One framed connection on which many calls are in flight at once (§5). */
class Connection {
  constructor(socket, version, onNotification) {
    this.socket = socket;
    this.version = version;
    this.onNotification = onNotification;
    this.serverInfo = null;
    this.pending = new Map(); // msgid -> {resolve, reject}, or null once abandoned
    this.streams = new Map(); // msgid -> ServerStream (§12), also in pending
    this.nextMsgid = 1;
    this.closedError = null;
    this.goaway = null; // {reason, grace_ms} once the server said goaway (§11.3)
    this.ended = false; // we half-closed (§11.4)
    this.reader = new FrameReader();
  }

  /** Usable for a new call: open, and not going away. */
  get usable() {
    return !this.closedError && !this.goaway;
  }

  request(method, params, { timeoutMs, signal } = {}) {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.goaway) return Promise.reject(new GoingAway());
    if (signal?.aborted) return Promise.reject(signal.reason);
    const msgid = this.allocateMsgid();
    const message = [REQUEST, msgid, method, params];
    if (timeoutMs !== undefined) message.push({ timeout_ms: timeoutMs });
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        if (this.pending.get(msgid)) {
          this.pending.set(msgid, null); // reserved until its late reply (§5)
          if (!this.ended) this.send([CANCEL, msgid]);
          reject(signal.reason);
          this.endIfDone();
        }
      };
      const settle = (fn) => (value) => {
        signal?.removeEventListener("abort", onAbort);
        fn(value);
      };
      this.pending.set(msgid, { resolve: settle(resolve), reject: settle(reject) });
      signal?.addEventListener("abort", onAbort, { once: true });
      this.send(message);
    });
  }

  /**
   * Open a server stream (§12): [0, msgid, method, params, {stream: "server",
   * credit: window}]. Its items go to `stream`, which grants credit as they are
   * consumed; the final response ends it.
   */
  openStream(stream, { window, timeoutMs }) {
    if (this.closedError) throw this.closedError;
    if (this.goaway) throw new GoingAway();
    if (this.version < 2) {
      throw new RemoteError(
        "unsupported_version",
        `${stream.method}: streams need protocol version 2; the server speaks version 1`,
      );
    }
    const msgid = this.allocateMsgid();
    const options = { stream: "server", credit: window };
    if (timeoutMs !== undefined) options.timeout_ms = timeoutMs;
    this.pending.set(msgid, {
      resolve: (result) => stream.finish(null, result),
      reject: (error) => stream.finish(error, null),
    });
    this.streams.set(msgid, stream);
    this.send([REQUEST, msgid, stream.method, stream.params, options]);
    return msgid;
  }

  /** The application left a stream before its end: cancel it, keep the msgid reserved. */
  leaveStream(msgid) {
    this.streams.delete(msgid);
    if (this.pending.get(msgid)) {
      this.pending.set(msgid, null);
      if (!this.ended && !this.closedError) this.send([CANCEL, msgid]);
      this.endIfDone();
    }
  }

  notify(method, params) {
    if (this.closedError) throw this.closedError;
    if (this.goaway) throw new GoingAway();
    this.send([NOTIFICATION, method, params]);
  }

  close() {
    if (this.closedError) return;
    // Cancel what is still waiting (§5): the server takes our EOF as a
    // half-close and would otherwise finish those calls for nobody (§7).
    if (!this.ended) {
      for (const [msgid, waiter] of this.pending) if (waiter) this.send([CANCEL, msgid]);
    }
    this.fail(new ConnectionClosed("the client closed the connection"));
    if (this.ended) this.socket.destroy();
    else this.socket.end(() => this.socket.destroy()); // flush what is queued, then go
  }

  allocateMsgid() {
    if (this.pending.size >= MSGID_LIMIT) throw new Error("every msgid is in flight");
    let msgid = this.nextMsgid;
    while (this.pending.has(msgid)) msgid = (msgid + 1) % MSGID_LIMIT;
    this.nextMsgid = (msgid + 1) % MSGID_LIMIT;
    return msgid;
  }

  send(message) {
    this.socket.write(encodeFrame(message));
  }

  /** After goaway: half-close once every call here is answered or abandoned. */
  endIfDone() {
    if (!this.goaway || this.ended || this.closedError) return;
    // Writes are queued in order, so end() sends our EOF after all of them.
    // Calls still pending finish on the half-open connection (§11.4); we
    // half-close at once, and cancels for them are no longer possible.
    this.ended = true;
    this.socket.end();
  }

  /** Handle one message from the server (after the hello). */
  receive(message) {
    if (!Array.isArray(message)) throw new ConnectionClosed("the server sent a non-array message");
    const [type] = message;
    if (type === RESPONSE) {
      const [, msgid, error, result] = message;
      const waiter = this.pending.get(msgid);
      this.pending.delete(msgid);
      this.streams.delete(msgid);
      if (!waiter) return; // a late reply to an abandoned call: dropped
      if (error === null || error === undefined) waiter.resolve(result);
      else waiter.reject(new RemoteError(error.code, error.message, error.data));
    } else if (type === ITEMS && this.version >= 2) {
      // Items of a stream we no longer wait on are dropped (§12.4).
      this.streams.get(message[1])?.push(message[2]);
    } else if (type === CREDIT && this.version >= 2) {
      // Only client and bidi streams are given credit; this client opens server streams.
    } else if (type === NOTIFICATION && message[1] === "goaway" && this.version >= 2) {
      const info = message[2]?.[0];
      this.goaway = {
        reason: typeof info?.reason === "string" ? info.reason : "unknown",
        grace_ms: Number.isInteger(info?.grace_ms) ? info.grace_ms : 0,
      };
      this.endIfDone();
    } else if (type === NOTIFICATION && message[1] !== "hello") {
      this.onNotification?.(message[1], message[2]);
    }
  }

  fail(error) {
    if (this.closedError) return;
    this.closedError = error;
    for (const waiter of this.pending.values()) waiter?.reject(error);
    this.pending.clear();
    this.streams.clear();
  }
}

/**
 * Open one connection offering `version`: connect, send the preamble, wait for
 * the hello (§4.6). Rejects on a failed connect, a timeout, or a close (or an
 * error notice) before the hello; an "unsupported_version" notice rejects
 * with a RemoteError of that code.
 */
function dial(host, port, version, timeoutMs, onNotification, onClose, tlsOptions) {
  return new Promise((resolve, reject) => {
    // TLS wraps the byte stream unchanged: the same preamble and frames inside it.
    const socket = tlsOptions
      ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ...tlsOptions })
      : net.createConnection({ host, port });
    const conn = new Connection(socket, version, onNotification);
    let ready = false;
    let notice = null;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connecting to ${host}:${port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    const lost = (error) => {
      clearTimeout(timer);
      if (!ready) reject(notice ?? error);
      conn.fail(error instanceof ConnectionClosed ? error : new ConnectionClosed(String(error)));
      onClose?.(conn);
    };
    socket.setNoDelay(true);
    socket.on(tlsOptions ? "secureConnect" : "connect", () =>
      socket.write(version === 2 ? PREAMBLE_V2 : PREAMBLE),
    );
    socket.on("error", lost);
    socket.on("close", () => lost(new ConnectionClosed("the server closed the connection")));
    socket.on("data", (chunk) => {
      try {
        for (const message of conn.reader.feed(chunk)) {
          if (ready) {
            conn.receive(message);
          } else if (message?.[0] === NOTIFICATION && message[1] === "hello") {
            conn.serverInfo = message[2][0];
            ready = true;
            clearTimeout(timer);
            resolve(conn);
          } else if (message?.[0] === NOTIFICATION && message[1] === "error") {
            const error = message[2]?.[0] ?? {};
            notice = new RemoteError(error.code, error.message, error.data);
          } else {
            throw new ConnectionClosed(`expected the server's hello, got ${JSON.stringify(message)}`);
          }
        }
      } catch (error) {
        socket.destroy();
        lost(error);
      }
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A server stream (§12) as an async iterator: `for await (const item of
 * client.stream("ticks", [5, 0.1])) { ... }`. It opens on its first next();
 * credit is granted as the loop consumes items (a window, refilled when half
 * of it was consumed), never merely as they arrive, so a slow loop slows the
 * server's producer instead of filling memory. Leaving the loop early
 * (break, return, throw) cancels the stream on the server. `result` holds
 * the final response's result (nil for a server stream) once it has ended.
 */
export class ServerStream {
  constructor(client, method, params, { window = STREAM_WINDOW, timeoutMs, signal } = {}) {
    this.client = client;
    this.method = method;
    this.params = params;
    this.window = window;
    this.timeoutMs = timeoutMs;
    this.signal = signal;
    this.conn = null;
    this.msgid = null;
    this.buffer = [];
    this.consumed = 0;
    this.done = false;
    this.error = null;
    this.result = undefined;
    this.wakeup = null; // resolves the next() waiting for something to happen
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  async next() {
    if (this.conn === null) await this.open();
    for (;;) {
      if (this.buffer.length) {
        const value = this.buffer.shift();
        this.consumed += 1;
        if (this.consumed >= Math.max(1, Math.floor(this.window / 2)) && !this.done) {
          // Grant what was consumed (§12.3): the server may send that many more.
          if (!this.conn.ended && !this.conn.closedError) {
            this.conn.send([CREDIT, this.msgid, this.consumed]);
          }
          this.consumed = 0;
        }
        return { value, done: false };
      }
      if (this.done) {
        if (this.error) throw this.error;
        return { value: undefined, done: true };
      }
      await new Promise((resolve) => {
        this.wakeup = resolve;
      });
    }
  }

  /** Called when a for-await loop is left early: cancel the stream on the server. */
  async return() {
    this.leave();
    return { value: undefined, done: true };
  }

  async open() {
    this.conn = true; // opening: next() does not open twice
    if (this.signal?.aborted) throw this.signal.reason;
    const deadline = this.timeoutMs === undefined ? Infinity : Date.now() + this.timeoutMs;
    const conn = await this.client.connection(deadline);
    this.conn = conn;
    this.msgid = conn.openStream(this, { window: this.window, timeoutMs: this.timeoutMs });
    this.signal?.addEventListener(
      "abort",
      () => {
        this.leave();
        this.finish(this.signal.reason, null);
      },
      { once: true },
    );
  }

  leave() {
    if (!this.done && this.conn && this.conn !== true) this.conn.leaveStream(this.msgid);
  }

  push(items) {
    this.buffer.push(...items);
    this.wake();
  }

  finish(error, result) {
    if (this.done) return;
    this.done = true;
    this.error = error;
    this.result = result;
    this.wake();
  }

  wake() {
    const wakeup = this.wakeup;
    this.wakeup = null;
    wakeup?.();
  }
}

/**
 * A client of one server address (a server, or a load balancer in front of
 * many): calls go to its current connection, which it replaces when the
 * server says goaway or the connection is lost (with `reconnect`).
 */
export class Client {
  constructor(
    host,
    port,
    { connectTimeoutMs = 10000, onNotification, reconnect = true, tls: tlsOptions } = {},
  ) {
    this.host = host;
    this.tlsOptions = tlsOptions;
    this.port = port;
    this.connectTimeoutMs = connectTimeoutMs;
    this.onNotification = onNotification;
    this.reconnect = reconnect;
    this.current = null; // the connection new calls go to
    this.connections = new Set(); // every open one: current and those draining
    this.dialing = null; // the promise of a connection being made
    this.backoffMs = 0; // the next wait between failed attempts; 0 after a success
    this.closed = false;
  }

  /** The current connection's hello map (§4.6): protocol, server, max_frame, ... */
  get serverInfo() {
    return this.current?.serverInfo ?? null;
  }

  /** Call `method` with positional params; resolves to its result. */
  call(method, ...params) {
    return this.request(method, params);
  }

  /**
   * Send a request (§4.2). Options: `timeoutMs` (sent as timeout_ms, and the
   * bound on the whole call, retries included), and `signal` (an AbortSignal:
   * on abort a cancel [3, msgid] is sent, the promise rejects with the
   * signal's reason and the late reply is dropped). A call answered
   * "unavailable" (§11.2) is sent again on a new connection, at most
   * UNAVAILABLE_RETRIES times.
   */
  async request(method, params = [], { timeoutMs, signal } = {}) {
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
    for (let attempt = 0; ; attempt++) {
      const conn = await this.connection(deadline);
      const left = deadline - Date.now();
      if (left <= 0) throw new RemoteError("timeout", `${method}: no reply within ${timeoutMs} ms`);
      try {
        return await conn.request(method, params, {
          timeoutMs: timeoutMs === undefined ? undefined : left,
          signal,
        });
      } catch (error) {
        if (error instanceof GoingAway) continue; // the goaway came first: not sent
        const retry = error instanceof RemoteError && error.code === "unavailable";
        if (retry && this.reconnect && attempt < UNAVAILABLE_RETRIES) continue;
        throw error;
      }
    }
  }

  /**
   * A server stream (§12) of `method` called with the array `params`, as an
   * async iterator (see ServerStream). Options: `window` (the credit, 128 by
   * default), `timeoutMs` (the whole call, sent as timeout_ms) and `signal`
   * (an AbortSignal: on abort the stream is cancelled and the loop throws the
   * signal's reason).
   */
  stream(method, params = [], options = {}) {
    return new ServerStream(this, method, params, options);
  }

  /** Send a notification (§4.4): the server never answers it. */
  async notify(method, ...params) {
    for (;;) {
      const conn = await this.connection(Infinity);
      try {
        return conn.notify(method, params);
      } catch (error) {
        if (!(error instanceof GoingAway)) throw error;
      }
    }
  }

  /** Close every connection; calls still waiting fail with ConnectionClosed. */
  close() {
    this.closed = true;
    for (const conn of this.connections) conn.close();
  }

  /** A connection for a new call: the current one, or a new one (§11.4). */
  async connection(deadline) {
    for (;;) {
      if (this.closed) throw new ConnectionClosed("the client closed the connection");
      if (this.current?.usable) return this.current;
      if (!this.reconnect && this.current) {
        throw this.current.closedError ?? new ConnectionClosed("the server is going away");
      }
      if (!this.dialing) {
        // Shared by every call waiting for a connection; its failure is theirs.
        this.dialing = this.redial();
        const done = () => {
          this.dialing = null;
        };
        this.dialing.then(done, done);
      }
      const left = Math.min(deadline - Date.now(), this.connectTimeoutMs);
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new ConnectionClosed(`no connection to ${this.host}:${this.port} in time`)),
          Math.max(0, left),
        );
      });
      try {
        await Promise.race([this.dialing, timeout]);
      } finally {
        clearTimeout(timer);
      }
    }
  }

  /**
   * Make a new current connection. After a goaway the first attempt is at
   * once; after a lost connection or a failed attempt, attempts are spaced
   * by the backoff, and they stop after connectTimeoutMs.
   */
  async redial() {
    const started = Date.now();
    let lastError = null;
    for (;;) {
      if (this.backoffMs) {
        await sleep(this.backoffMs * (0.8 + 0.4 * Math.random()));
      }
      try {
        this.install(await this.open(Math.max(1, this.connectTimeoutMs - (Date.now() - started))));
        this.backoffMs = 0;
        return;
      } catch (error) {
        lastError = error;
        this.backoffMs = Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_FIRST_MS, this.backoffMs * 2));
      }
      if (this.closed || Date.now() - started >= this.connectTimeoutMs) {
        throw new ConnectionClosed(
          `cannot reconnect to ${this.host}:${this.port}: ${lastError?.message ?? lastError}`,
        );
      }
    }
  }

  /** One connection, offering version 2 and falling back to 1 (§11.1). */
  async open(timeoutMs) {
    const onClose = (conn) => this.lostConnection(conn);
    try {
      return await dial(
        this.host, this.port, 2, timeoutMs, this.onNotification, onClose, this.tlsOptions,
      );
    } catch (error) {
      if (!(error instanceof RemoteError && error.code === "unsupported_version")) throw error;
      return await dial(
        this.host, this.port, 1, timeoutMs, this.onNotification, onClose, this.tlsOptions,
      );
    }
  }

  install(conn) {
    if (this.closed) {
      conn.close();
      return;
    }
    this.current = conn;
    this.connections.add(conn);
  }

  lostConnection(conn) {
    this.connections.delete(conn);
    // Lost without a goaway (a crash, a reset): the next attempt waits a little.
    if (conn === this.current && !conn.goaway && !this.backoffMs) this.backoffMs = BACKOFF_FIRST_MS;
  }
}

/**
 * Connect to a trio_echo server (or a balancer in front of several) and
 * resolve to a Client once the server's hello arrived. The first connection
 * is not retried: a failure rejects at once. Options: connectTimeoutMs
 * (default 10 s, also the bound on each reconnection), onNotification(method,
 * params) for server notifications other than hello and goaway, and
 * reconnect (default true; false makes a lost or retiring connection final),
 * and tls: options for node:tls connect (ca, cert, key, servername, ...) to
 * speak TLS; the server name defaults to host when host is a name.
 */
export async function connect(host, port, options = {}) {
  const client = new Client(host, port, options);
  client.install(await client.open(client.connectTimeoutMs));
  return client;
}
