// A small Node.js client for the trio_echo wire protocol v1, written from
// protocol.md only (Appendix B is the recipe): preamble, hello, length-prefixed
// msgpack frames, msgids matched to callers, cancel on abort, error codes.
//
//   import { connect } from "./trio_echo.js";
//   const client = await connect("127.0.0.1", 7000);
//   await client.call("echo", "hi");                          // -> "hi"
//   await client.request("sleep", [5], { timeoutMs: 100 });   // rejects, code "timeout"
//   client.close();

import net from "node:net";
import { decode, encode } from "@msgpack/msgpack";

/** §2.1: magic "\x00TECHO\x00" then the version byte 1. */
export const PREAMBLE = Uint8Array.from([0x00, 0x54, 0x45, 0x43, 0x48, 0x4f, 0x00, 0x01]);
/** §5: msgids are uint32. */
const MSGID_LIMIT = 2 ** 32;
/** §3: our own receive limit (the server's max_frame only bounds what it accepts). */
const MAX_RECEIVE_FRAME = 64 * 1024 * 1024;

const REQUEST = 0;
const RESPONSE = 1;
const NOTIFICATION = 2;
const CANCEL = 3;

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

/** A framed connection on which many calls are in flight at once (§5). */
export class Client {
  constructor(socket, { onNotification } = {}) {
    this.socket = socket;
    this.onNotification = onNotification;
    this.serverInfo = null;
    this.pending = new Map(); // msgid -> {resolve, reject}, or null once abandoned
    this.nextMsgid = 1;
    this.closedError = null;
    this.reader = new FrameReader();
  }

  /** Call `method` with positional params; resolves to its result. */
  call(method, ...params) {
    return this.request(method, params);
  }

  /**
   * Send a request (§4.2). Options: `timeoutMs` (sent as timeout_ms), and
   * `signal` (an AbortSignal: on abort a cancel [3, msgid] is sent, the promise
   * rejects with the signal's reason and the late reply is dropped).
   */
  request(method, params = [], { timeoutMs, signal } = {}) {
    if (this.closedError) return Promise.reject(this.closedError);
    if (signal?.aborted) return Promise.reject(signal.reason);
    const msgid = this.allocateMsgid();
    const message = [REQUEST, msgid, method, params];
    if (timeoutMs !== undefined) message.push({ timeout_ms: timeoutMs });
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        if (this.pending.get(msgid)) {
          this.pending.set(msgid, null); // reserved until its late reply (§5)
          this.send([CANCEL, msgid]);
          reject(signal.reason);
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

  /** Send a notification (§4.4): the server never answers it. */
  notify(method, ...params) {
    if (this.closedError) throw this.closedError;
    this.send([NOTIFICATION, method, params]);
  }

  /**
   * Close the connection; calls still waiting fail with ConnectionClosed. The
   * server is sent a cancel for each of them first (§5), since it takes our
   * EOF as a half-close and would otherwise finish them for nobody (§7).
   */
  close() {
    if (this.closedError) return;
    for (const [msgid, waiter] of this.pending) if (waiter) this.send([CANCEL, msgid]);
    this.fail(new ConnectionClosed("the client closed the connection"));
    this.socket.end(() => this.socket.destroy()); // flush what is queued, then go

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

  /** Handle one message from the server (after the hello). */
  receive(message) {
    if (!Array.isArray(message)) throw new ConnectionClosed("the server sent a non-array message");
    const [type] = message;
    if (type === RESPONSE) {
      const [, msgid, error, result] = message;
      const waiter = this.pending.get(msgid);
      this.pending.delete(msgid);
      if (!waiter) return; // a late reply to an abandoned call: dropped
      if (error === null || error === undefined) waiter.resolve(result);
      else waiter.reject(new RemoteError(error.code, error.message, error.data));
    } else if (type === NOTIFICATION && message[1] !== "hello") {
      this.onNotification?.(message[1], message[2]);
    }
  }

  fail(error) {
    if (this.closedError) return;
    this.closedError = error;
    for (const waiter of this.pending.values()) waiter?.reject(error);
    this.pending.clear();
  }
}

/**
 * Connect, send the preamble and wait for the server's hello (§4.6).
 * Resolves to a Client; rejects on a failed connect, a timeout, or a close
 * (or an error notice) before the hello.
 */
export function connect(host, port, { connectTimeoutMs = 10000, onNotification } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host, port });
    const client = new Client(socket, { onNotification });
    let ready = false;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connecting to ${host}:${port} timed out`));
    }, connectTimeoutMs);
    const lost = (error) => {
      clearTimeout(timer);
      if (!ready) reject(error);
      client.fail(error instanceof ConnectionClosed ? error : new ConnectionClosed(String(error)));
    };
    socket.setNoDelay(true);
    socket.on("connect", () => socket.write(PREAMBLE));
    socket.on("error", lost);
    socket.on("close", () => lost(new ConnectionClosed("the server closed the connection")));
    socket.on("data", (chunk) => {
      try {
        for (const message of client.reader.feed(chunk)) {
          if (ready) {
            client.receive(message);
          } else if (message?.[0] === NOTIFICATION && message[1] === "hello") {
            client.serverInfo = message[2][0];
            ready = true;
            clearTimeout(timer);
            resolve(client);
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
