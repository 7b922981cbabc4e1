// The JS client over mutual TLS, against the server tests/e2e/test_js_client.py
// starts with certificates from trustme: TRIO_ECHO_TLS_PORT, TRIO_ECHO_TLS_CA
// (the CA's PEM file) and TRIO_ECHO_TLS_CLIENT (a client certificate and key in
// one PEM file). Run alone (npm test) without them, it says so and skips.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { connect } from "../trio_echo.js";

const port = Number(process.env.TRIO_ECHO_TLS_PORT ?? 0);
const skip = port ? false : "set TRIO_ECHO_TLS_PORT, TRIO_ECHO_TLS_CA, TRIO_ECHO_TLS_CLIENT";

test("calls over mutual TLS", { skip }, async () => {
  const ca = readFileSync(process.env.TRIO_ECHO_TLS_CA);
  const pem = readFileSync(process.env.TRIO_ECHO_TLS_CLIENT);
  const client = await connect("localhost", port, { tls: { ca, cert: pem, key: pem } });
  try {
    assert.equal(client.serverInfo.max_frame, 4194304);
    assert.deepEqual(await client.call("echo", { a: [1, "two"] }), { a: [1, "two"] });
    const many = await Promise.all(Array.from({ length: 50 }, (_, i) => client.call("echo", i)));
    assert.deepEqual(many, Array.from({ length: 50 }, (_, i) => i));
  } finally {
    client.close();
  }
});

test("a server certificate from an unknown CA is refused", { skip }, async () => {
  await assert.rejects(connect("localhost", port, { tls: {}, connectTimeoutMs: 5000 }), (error) => {
    assert.match(String(error.code ?? error.message), /CERT|certificate|SELF_SIGNED|ISSUER/i);
    return true;
  });
});

test("without a client certificate the server refuses", { skip }, async () => {
  const ca = readFileSync(process.env.TRIO_ECHO_TLS_CA);
  await assert.rejects(connect("localhost", port, { tls: { ca }, connectTimeoutMs: 5000 }));
});
