// SIP.js registers over WebSocket with SIP Outbound and sends its double-CRLF keep-alive every
// --interval seconds (RFC 5626 §3.5.1 / §4.4.1 over RFC 7118). The server must answer each ping
// with a single CRLF and must not take the pings for SIP; afterwards the flow must still carry
// SIP: a MESSAGE from a JsSIP UA (--peer) to the SIP.js UA's AOR reaches it over that WebSocket.
// (Not a MESSAGE to itself: SIP.js rightly answers its own request with 482, RFC 3261 §8.2.2.2.)
// Usage: node sipjs_keepalive.mjs --ws ws://127.0.0.1:PORT [--user dave] [--peer erin]
//        [--interval 1] [--pings 3]
// Result line (stdout, "RESULT " prefix): {"ok", "registered", "pings", "pongs", "message", "received"}

import { options, finish, watchdog, log } from "./common.mjs";
import { startJssip, startSipjs, jssipMessage } from "./clients.mjs";

const opts = options({
  interval: { type: "string", default: "1" },
  pings: { type: "string", default: "3" },
});
const wanted = Number(opts.pings);
const state = { ok: false, registered: null, pings: 0, pongs: 0, other_frames: 0, message: null, received: [] };
watchdog(Number(opts.timeout), () => state);

const ua = await startSipjs({
  wsUrl: opts.ws,
  user: opts.user,
  domain: opts.domain,
  instanceId: "5c1a1b0e-6b7e-4a55-9c52-2f4b8f0a5007",
  keepAliveInterval: Number(opts.interval),
});
state.registered = ua.status;
state.received = ua.received;
if (!ua.ok) {
  finish({ ...state, error: "registration failed" });
} else {
  // Count what arrives on the WebSocket from now on: CRLF-only frames are pongs.
  ua.ua.transport.ws.addEventListener("message", (ev) => {
    if (typeof ev.data === "string" && /^(\r\n)+$/.test(ev.data)) state.pongs += 1;
    else state.other_frames += 1;
  });
  const pings = () => ua.sent.filter((m) => /^(\r\n)+$/.test(m)).length;
  await new Promise((resolve) => {
    const poll = setInterval(() => {
      state.pings = pings();
      if (state.pings >= wanted) {
        clearInterval(poll);
        resolve();
      }
    }, 50);
  });
  await new Promise((resolve) => setTimeout(resolve, 300)); // let the last pong arrive
  log(`pings ${state.pings} pongs ${state.pongs}`);
  const text = `still there after ${state.pings} pings`;
  const peer = await startJssip({
    wsUrl: opts.ws,
    user: opts.peer,
    domain: opts.domain,
    instanceId: "5c1a1b0e-6b7e-4a55-9c52-2f4b8f0a5008",
  });
  state.message = await jssipMessage(peer.ua, `sip:${opts.user}@${opts.domain}`, text);
  state.ok = state.pongs >= wanted && state.message.ok && ua.received.some((m) => m.body === text);
  finish(state);
}
