// A JsSIP UA (--user, default alice) and a SIP.js UA (--peer, default bob) both register over
// WebSocket with SIP Outbound, then send each other a MESSAGE through the server. Each side
// reports the response to what it sent and the bodies it received. Finally the JsSIP UA sends a
// MESSAGE to the public GRUU the SIP.js UA learnt from its 200 OK (RFC 5627 §7), which must
// reach that instance too.
// Usage: node message_exchange.mjs --ws ws://127.0.0.1:PORT [--user alice] [--peer bob]
// Result line (stdout, "RESULT " prefix): {"ok", "jssip": {...}, "sipjs": {...}}

import { options, finish, watchdog, log } from "./common.mjs";
import { startJssip, startSipjs, jssipMessage, sipjsMessage } from "./clients.mjs";

const opts = options();
const nonce = Math.random().toString(36).slice(2, 10);
const state = {
  ok: false,
  texts: {
    to_peer: `hello ${opts.peer} from ${opts.user} via JsSIP ${nonce}`,
    to_user: `hi ${opts.user}, ${opts.peer} here on SIP.js ${nonce}`,
    to_gruu: `to ${opts.peer}'s GRUU ${nonce}`,
  },
  gruu: { target: null, sent: null },
  jssip: { user: opts.user, registered: null, sent: null, received: [] },
  sipjs: { user: opts.peer, registered: null, sent: null, received: [] },
};
watchdog(Number(opts.timeout), () => state);

const jssipReceived = [];
const waiters = [];
const a = await startJssip({
  wsUrl: opts.ws,
  user: opts.user,
  domain: opts.domain,
  instanceId: "5c1a1b0e-6b7e-4a55-9c52-2f4b8f0a3003",
});
a.ua.on("newMessage", ({ originator, request }) => {
  if (originator !== "remote") return;
  log(`jssip ${opts.user}: MESSAGE from ${request.from.uri}`);
  jssipReceived.push({ from: String(request.from.uri), body: request.body });
  waiters.splice(0).forEach((w) => w());
});
state.jssip.registered = a.status;

const b = await startSipjs({
  wsUrl: opts.ws,
  user: opts.peer,
  domain: opts.domain,
  instanceId: "5c1a1b0e-6b7e-4a55-9c52-2f4b8f0a3004",
});
state.sipjs.registered = b.status;
state.sipjs.received = b.received;
state.jssip.received = jssipReceived;
if (!a.ok || !b.ok) {
  finish({ ...state, error: "registration failed" });
} else {
  state.jssip.sent = await jssipMessage(a.ua, `sip:${opts.peer}@${opts.domain}`, state.texts.to_peer);
  state.sipjs.sent = await sipjsMessage(b.ua, `sip:${opts.user}@${opts.domain}`, state.texts.to_user);
  // The 200 for a MESSAGE may overtake our own bookkeeping of the request; wait briefly for it.
  if (jssipReceived.length === 0) {
    await new Promise((resolve) => {
      waiters.push(resolve);
      setTimeout(resolve, 2000);
    });
  }
  state.gruu.target = b.ua.contact.pubGruu ? String(b.ua.contact.pubGruu) : null;
  if (state.gruu.target) {
    state.gruu.sent = await jssipMessage(a.ua, state.gruu.target, state.texts.to_gruu);
  }
  state.ok =
    Boolean(state.gruu.sent && state.gruu.sent.ok) &&
    b.received.some((m) => m.body === state.texts.to_gruu) &&
    state.jssip.sent.ok &&
    state.sipjs.sent.ok &&
    b.received.some((m) => m.body === state.texts.to_peer) &&
    jssipReceived.some((m) => m.body === state.texts.to_user);
  finish(state);
}
