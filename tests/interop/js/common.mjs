// Shared pieces of the JsSIP / SIP.js interop scripts run by tests/interop/test_js_clients.py.
//
// Invariants:
// - Importing this module installs the browser globals both libraries expect (a WebSocket
//   constructor from `ws`) before either library opens a connection.
// - Every script ends by printing exactly one line `RESULT {json}` on stdout (via `finish`) and
//   exiting; console.log/info/debug (JsSIP's debug output uses console.info) go to stderr, so
//   stdout carries nothing else.
// - A watchdog makes every script finish (with ok=false) instead of hanging the test run.

import { format, parseArgs } from "node:util";
import { WebSocket } from "ws";

// Must run before JsSIP is loaded: its loggers bind console.info when its modules are evaluated.
const toStderr = (...args) => process.stderr.write(format(...args) + "\n");
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

// Node 20 has no global WebSocket; JsSIP's WebSocketInterface and SIP.js's web Transport both
// construct one with `new WebSocket(url, "sip")` and use the browser API (onopen/addEventListener,
// binaryType), which `ws` implements.
if (typeof globalThis.WebSocket === "undefined") {
  globalThis.WebSocket = WebSocket;
}
// No other browser globals are needed for MESSAGE and REGISTER: JsSIP touches `window` only for
// an incoming INVITE (RTCPeerConnection), SIP.js only in its WebRTC session description handler.

/** Command-line options common to all scripts. */
export function options(extra = {}) {
  const { values } = parseArgs({
    options: {
      ws: { type: "string" },
      domain: { type: "string", default: "example.com" },
      user: { type: "string", default: "alice" },
      peer: { type: "string", default: "bob" },
      password: { type: "string", default: "" },
      timeout: { type: "string", default: "15" },
      ...extra,
    },
    strict: true,
  });
  if (!values.ws) {
    throw new Error("--ws ws://HOST:PORT is required");
  }
  return values;
}

/** Print the result line and exit; later calls are ignored. */
let finished = false;
export function finish(result) {
  if (finished) return;
  finished = true;
  process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
  // Let stdout drain before exiting; open sockets and timers must not keep the process alive.
  setTimeout(() => process.exit(0), 50);
}

/** Finish with ok=false and `state` if the script has not finished after `seconds`. */
export function watchdog(seconds, state) {
  const timer = setTimeout(() => {
    finish({ ...state(), ok: false, error: `script timed out after ${seconds}s` });
  }, seconds * 1000);
  timer.unref();
}

/** Log to stderr with a relative timestamp (shown by the Python test on failure). */
const t0 = Date.now();
export function log(...args) {
  process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(3)}] ${args.join(" ")}\n`);
}

/** Milliseconds since the script started (monotonic enough for a few-second budget). */
export function elapsedMs() {
  return Date.now() - t0;
}

/** Every value of header `name` in a JsSIP or SIP.js IncomingMessage, as one array. */
export function headerValues(message, name) {
  if (!message) return [];
  const values = typeof message.getHeaders === "function" ? message.getHeaders(name) : [];
  return values.flatMap((v) => String(v).split(",")).map((v) => v.trim()).filter(Boolean);
}

/** Option-tag list of header `name` (lower-cased). */
export function optionTags(message, name) {
  return headerValues(message, name).map((v) => v.toLowerCase());
}
