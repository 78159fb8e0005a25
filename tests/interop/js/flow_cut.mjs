// The peer (JsSIP, --peer, default bob) registers over WebSocket with SIP Outbound; then the TCP
// connection under its WebSocket is destroyed: no close frame and no un-REGISTER, as when a
// browser tab crashes or the network goes away. After --settle-ms, a second JsSIP UA (--user,
// default alice) sends it a MESSAGE. The server should have dropped the binding with the flow
// (RFC 5626 §6 / OB-REG-16, RFC 7118 §5 / WS-09), so the MESSAGE fails at once (480 or 404).
// Usage: node flow_cut.mjs --ws ws://127.0.0.1:PORT [--settle-ms 500]
// Result line (stdout, "RESULT " prefix): {"ok", "peer_registered", "peer_registers_sent", "message": {status, ms}, ...}

import { options, finish, watchdog, log } from "./common.mjs";
import { startJssip, jssipMessage } from "./clients.mjs";

const opts = options({ "settle-ms": { type: "string", default: "500" } });
const state = { ok: false, peer_registered: null, peer_unregisters_sent: null, message: null };
watchdog(Number(opts.timeout), () => state);

const peer = await startJssip({
  wsUrl: opts.ws,
  user: opts.peer,
  domain: opts.domain,
  instanceId: "5c1a1b0e-6b7e-4a55-9c52-2f4b8f0a4005",
});
state.peer_registered = peer.status;
if (!peer.ok) {
  finish({ ...state, error: "peer registration failed" });
} else {
  const caller = await startJssip({
    wsUrl: opts.ws,
    user: opts.user,
    domain: opts.domain,
    instanceId: "5c1a1b0e-6b7e-4a55-9c52-2f4b8f0a4006",
  });
  state.caller_registered = caller.status;

  log(`cutting ${opts.peer}'s WebSocket`);
  peer.socket.cutAbruptly();
  await new Promise((resolve) => setTimeout(resolve, Number(opts["settle-ms"])));

  state.message = await jssipMessage(caller.ua, `sip:${opts.peer}@${opts.domain}`, "are you there?");
  log(`MESSAGE to ${opts.peer}: ${JSON.stringify(state.message)}`);
  // Every REGISTER the peer sent, to prove it never unregistered (expires=0 / Expires: 0).
  const registers = peer.socket.sent.filter((m) => m.startsWith("REGISTER "));
  state.peer_registers_sent = registers.length;
  state.peer_unregisters_sent = registers.filter((m) => /expires[=:]\s*0\b/i.test(m)).length;
  state.ok = !state.message.ok && [404, 480].includes(state.message.status);
  finish(state);
}
