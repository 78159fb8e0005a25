// Thin wrappers that start a JsSIP or SIP.js user agent against the server over WebSocket and
// record the raw SIP text the library puts on the wire (so the Python test can check that the
// REGISTER really asked for outbound, RFC 5626 §4.2.1).
//
// Invariants:
// - `common.mjs` is imported first, so the global WebSocket exists before a library connects.
// - Registration helpers resolve exactly once, either `{ ok: true, ... }` on a 2xx or
//   `{ ok: false, ... }` on a final failure; they never reject.
// - Nothing here unregisters on its own: scripts decide whether a UA leaves cleanly or dies.

import { log, optionTags, headerValues } from "./common.mjs";
import JsSIP from "jssip";
import { UserAgent, Registerer, RegistererState, Messager, URI } from "sip.js";
import { readFileSync } from "node:fs";

/** Version of an installed package, from its package.json (sip.js 0.21.2 reports 0.21.1 itself). */
function installedVersion(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, "utf8")).version;
}
export const JSSIP_VERSION = installedVersion("jssip");
export const SIPJS_VERSION = installedVersion("sip.js");

// Library debug output goes to stderr (the Python test prints it when an assertion fails).
if (process.env.JS_SIP_DEBUG !== "0") {
  JsSIP.debug.enable("JsSIP:Transport,JsSIP:Registrator,JsSIP:UA,JsSIP:WARN:*,JsSIP:ERROR:*");
}

/** First line plus selected headers of a raw SIP message, for reports. */
export function summarize(raw) {
  const lines = String(raw).split("\r\n");
  const pick = (name) =>
    lines
      .filter((l) => l.toLowerCase().startsWith(name.toLowerCase() + ":"))
      .map((l) => l.slice(name.length + 1).trim());
  return {
    start: lines[0],
    contact: pick("Contact"),
    supported: pick("Supported"),
    require: pick("Require"),
    authorization: pick("Authorization"),
  };
}

// ---------------------------------------------------------------------------------------------
// JsSIP

/** A WebSocketInterface that remembers what it sent and can be cut without a close handshake. */
class TappedJssipSocket extends JsSIP.WebSocketInterface {
  constructor(url, name) {
    super(url);
    this.sent = [];
    this.name = name;
  }

  send(message) {
    this.sent.push(String(message));
    return super.send(message);
  }

  /**
   * Kill the TCP connection under the WebSocket as a crashed tab or a lost network would: no
   * WebSocket close frame, no SIP un-REGISTER. JsSIP's handlers are detached first so the UA
   * neither notices nor reconnects and re-registers (which would hide the dead flow).
   */
  cutAbruptly() {
    const ws = this._ws;
    ws.onopen = () => {};
    ws.onclose = () => {};
    ws.onmessage = () => {};
    ws.onerror = () => {};
    ws._socket.destroy();
  }
}

/**
 * Start a JsSIP UA for `user@domain` over `wsUrl` and register it. Resolves with
 * `{ ok, ua, socket, status, cause, response }`.
 *
 * Outbound: JsSIP always lists `outbound` in Supported and puts `reg-id=1` and
 * `+sip.instance="<urn:uuid:INSTANCE>"` on the REGISTER Contact; `instance_id` fixes the instance.
 */
export function startJssip({ wsUrl, user, domain, password = "", instanceId, expires = 300 }) {
  const socket = new TappedJssipSocket(wsUrl, user);
  const config = {
    sockets: [socket],
    uri: `sip:${user}@${domain}`,
    register: true, // register as soon as the WebSocket is up
    register_expires: expires,
    instance_id: instanceId,
    user_agent: `sipserver-interop JsSIP ${JSSIP_VERSION}`,
    connection_recovery_min_interval: 30,
    connection_recovery_max_interval: 60,
  };
  if (password) {
    config.password = password;
  }
  const ua = new JsSIP.UA(config);
  return new Promise((resolve) => {
    let done = false;
    const settle = (value) => {
      if (!done) {
        done = true;
        resolve({ ua, socket, ...value });
      }
    };
    ua.on("connected", () => {
      log(`jssip ${user}: connected`);
    });
    ua.on("registered", ({ response }) => {
      log(`jssip ${user}: registered ${response.status_code}`);
      settle({ ok: true, status: response.status_code, response });
    });
    ua.on("registrationFailed", ({ response, cause }) => {
      log(`jssip ${user}: registrationFailed ${cause} ${response ? response.status_code : "-"}`);
      settle({ ok: false, status: response ? response.status_code : null, cause, response });
    });
    ua.on("disconnected", () => {
      settle({ ok: false, status: null, cause: "disconnected", response: null });
    });
    ua.start();
  });
}

/** Report fields shared by the JsSIP registration scripts. */
export function jssipRegisterReport(started) {
  const registers = started.socket.sent.filter((m) => m.startsWith("REGISTER "));
  const response = started.response;
  return {
    library: "jssip",
    version: JSSIP_VERSION,
    ok: started.ok,
    status: started.status,
    cause: started.cause ?? null,
    response_require: optionTags(response, "require"),
    response_contact: headerValues(response, "contact"),
    flow_timer: response ? response.getHeader("flow-timer") ?? null : null,
    registers_sent: registers.length,
    register: registers.length ? summarize(registers[registers.length - 1]) : null,
  };
}

/** Send a JsSIP MESSAGE; resolves with `{ ok, status, cause, ms }`. */
export function jssipMessage(ua, target, text) {
  const started = Date.now();
  return new Promise((resolve) => {
    ua.sendMessage(target, text, {
      contentType: "text/plain",
      eventHandlers: {
        succeeded: ({ response }) =>
          resolve({ ok: true, status: response.status_code, cause: null, ms: Date.now() - started }),
        failed: ({ response, cause }) =>
          resolve({
            ok: false,
            status: response ? response.status_code : null,
            cause,
            ms: Date.now() - started,
          }),
      },
    });
  });
}

// ---------------------------------------------------------------------------------------------
// SIP.js

/**
 * Start a SIP.js UserAgent for `user@domain` over `wsUrl` and register it with a Registerer.
 * Resolves with `{ ok, ua, registerer, sent, status, response, received }`; `received` collects
 * MESSAGE bodies delivered to this UA (answered 200 by `accept()`); `sent` every string the
 * transport sent (SIP messages and keep-alive pings).
 *
 * Outbound: SIP.js always lists `outbound` in Supported; a Registerer with `instanceId` (and
 * `regId`, defaulting to 1 when an instance is set) adds `reg-id` and `+sip.instance` to Contact.
 */
export async function startSipjs({
  wsUrl,
  user,
  domain,
  password = "",
  instanceId,
  expires = 300,
  keepAliveInterval = 0,
}) {
  const received = [];
  const ua = new UserAgent({
    uri: UserAgent.makeURI(`sip:${user}@${domain}`),
    transportOptions: {
      server: wsUrl,
      traceSip: process.env.JS_SIP_DEBUG !== "0",
      // Seconds between double-CRLF pings (RFC 5626 §3.5.1); 0 = none. SIP.js counts a lone
      // CRLF from the server as the pong.
      keepAliveInterval,
    },
    authorizationUsername: password ? user : undefined,
    authorizationPassword: password || undefined,
    instanceId,
    userAgentString: `sipserver-interop SIP.js ${SIPJS_VERSION}`,
    logLevel: "warn",
    logConfiguration: false,
    logConnector: (level, category, label, content) =>
      process.stderr.write(`sipjs ${user} ${level} ${category}: ${content}\n`),
    delegate: {
      onMessage: (message) => {
        log(`sipjs ${user}: MESSAGE from ${message.request.from.uri}`);
        received.push({ from: String(message.request.from.uri), body: message.request.body });
        message.accept();
      },
    },
  });
  const sent = [];
  await ua.start();
  // Tap outgoing traffic at the transport (after start(): the transport exists from construction).
  const transport = ua.transport;
  const origSend = transport.send.bind(transport);
  transport.send = (message) => {
    sent.push(String(message));
    return origSend(message);
  };
  const registerer = new Registerer(ua, {
    expires,
    instanceId,
    regId: 1,
    logConfiguration: false,
  });
  const result = await new Promise((resolve) => {
    let done = false;
    const settle = (value) => {
      if (!done) {
        done = true;
        resolve(value);
      }
    };
    registerer
      .register({
        requestDelegate: {
          onAccept: (response) => {
            log(`sipjs ${user}: REGISTER accepted ${response.message.statusCode}`);
            settle({ ok: true, status: response.message.statusCode, response: response.message });
          },
          onReject: (response) => {
            log(`sipjs ${user}: REGISTER rejected ${response.message.statusCode}`);
            settle({ ok: false, status: response.message.statusCode, response: response.message });
          },
        },
      })
      .catch((error) => settle({ ok: false, status: null, response: null, error: String(error) }));
    registerer.stateChange.addListener((state) => {
      log(`sipjs ${user}: registerer state ${state}`);
      if (state === RegistererState.Terminated) {
        settle({ ok: false, status: null, response: null, error: "registerer terminated" });
      }
    });
  });
  return { ua, registerer, sent, received, ...result, registered: registerer.state === RegistererState.Registered };
}

/** Report fields for a SIP.js registration. */
export function sipjsRegisterReport(started) {
  const registers = started.sent.filter((m) => m.startsWith("REGISTER "));
  const response = started.response;
  return {
    library: "sip.js",
    version: SIPJS_VERSION,
    ok: started.ok,
    status: started.status,
    registered_state: started.registerer.state,
    error: started.error ?? null,
    response_require: optionTags(response, "require"),
    response_contact: headerValues(response, "contact"),
    flow_timer: response && response.hasHeader("flow-timer") ? response.getHeader("flow-timer") : null,
    registers_sent: registers.length,
    register: registers.length ? summarize(registers[registers.length - 1]) : null,
  };
}

/** Send a SIP.js MESSAGE; resolves with `{ ok, status, ms }`. */
export function sipjsMessage(ua, target, text) {
  const started = Date.now();
  return new Promise((resolve) => {
    const messager = new Messager(ua, UserAgent.makeURI(target), text, "text/plain");
    messager
      .message({
        requestDelegate: {
          onAccept: (response) =>
            resolve({ ok: true, status: response.message.statusCode, ms: Date.now() - started }),
          onReject: (response) =>
            resolve({ ok: false, status: response.message.statusCode, ms: Date.now() - started }),
        },
      })
      .catch((error) => resolve({ ok: false, status: null, error: String(error), ms: Date.now() - started }));
  });
}

export { JsSIP, URI };
