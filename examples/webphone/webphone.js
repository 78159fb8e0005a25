// sipserver web phone: SIP.js SimpleUser registering with SIP Outbound over WebSocket.
//
// Outbound (RFC 5626) is what lets sipserver reach a browser at all: the browser's Contact
// names a made-up *.invalid host, so the only way in is the WebSocket it opened. The phone
// sends +sip.instance (one stable UUID per browser, kept in localStorage) and reg-id=1, and
// pings CRLF CRLF every 25 s so the server's Flow-Timer never expires (RFC 5626 §4.4.1).
import { Web } from "./sip.js/lib/index.js";

const $ = (id) => document.getElementById(id);
const KEEPALIVE_SECONDS = 25;
// Query string: prefill (server, user, domain, password, target); register=1 registers on load,
// call=USER calls once registered, answer=1 answers incoming calls (intercom / kiosk use),
// hangup=SECONDS hangs up that long after a call is answered, stats=1 logs the call's audio
// packet counts every second (what the browser test reads to see media flow).
const params = new URLSearchParams(location.search);
let autoCalled = false;
let statsTimer = null;
let hangupTimer = null;

function log(text) {
  const line = `${new Date().toISOString().slice(11, 19)} ${text}\n`;
  $("log").textContent += line;
  $("log").scrollTop = $("log").scrollHeight;
  console.log(`webphone: ${text}`);
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function instanceId() {
  // RFC 5626 §4.1: the same instance id every time this browser registers.
  let id = localStorage.getItem("sipserver-webphone-instance");
  if (!id) {
    id = crypto.randomUUID ? crypto.randomUUID() : "00000000-0000-4000-8000-" + Date.now().toString(16).padStart(12, "0").slice(-12);
    localStorage.setItem("sipserver-webphone-instance", id);
  }
  return id;
}

function buttons({ registered, inCall, ringing }) {
  $("register").disabled = registered;
  $("unregister").disabled = !registered;
  $("call").disabled = !registered || inCall;
  $("answer").disabled = !ringing;
  $("hangup").disabled = !inCall && !ringing;
}

let phone = null;
let registered = false;

async function logRtpStats() {
  // RTP packets of the call's audio, both ways (RTCPeerConnection.getStats, webrtc-stats).
  const handler = phone && phone.session && phone.session.sessionDescriptionHandler;
  const pc = handler && handler.peerConnection;
  if (!pc) return;
  let received = 0;
  let sent = 0;
  (await pc.getStats()).forEach((s) => {
    if (s.kind !== "audio") return;
    if (s.type === "inbound-rtp") received += s.packetsReceived || 0;
    if (s.type === "outbound-rtp") sent += s.packetsSent || 0;
  });
  log(`audio packets received ${received} sent ${sent}`);
}

function callAnswered() {
  if (params.get("stats") === "1") statsTimer = setInterval(logRtpStats, 1000);
  const after = parseFloat(params.get("hangup") || "");
  if (after > 0) {
    hangupTimer = setTimeout(async () => {
      await logRtpStats();
      log("hanging up");
      phone.hangup().catch((e) => log(`hangup failed: ${e}`));
    }, after * 1000);
  }
}

function callEnded() {
  clearInterval(statsTimer);
  clearTimeout(hangupTimer);
  statsTimer = hangupTimer = null;
}

async function register() {
  const server = $("server").value.trim();
  const user = $("user").value.trim();
  const domain = $("domain").value.trim();
  const password = $("password").value;
  const instance = instanceId();
  phone = new Web.SimpleUser(server, {
    aor: `sip:${user}@${domain}`,
    media: { remote: { audio: $("remote-audio") } },
    registererOptions: { regId: 1, instanceId: instance, expires: 300 },
    userAgentOptions: {
      authorizationUsername: password ? user : undefined,
      authorizationPassword: password || undefined,
      instanceId: instance,
      userAgentString: "sipserver-webphone (SIP.js)",
      transportOptions: { server, keepAliveInterval: KEEPALIVE_SECONDS },
      logLevel: "warn",
    },
    delegate: {
      onServerConnect: () => log(`connected to ${server}`),
      onServerDisconnect: () => {
        registered = false;
        setStatus("disconnected", "disconnected");
        buttons({ registered: false, inCall: false, ringing: false });
        log("connection lost");
      },
      onRegistered: () => {
        registered = true;
        setStatus("registered", `registered as ${user}@${domain}`);
        buttons({ registered: true, inCall: false, ringing: false });
        log("registered");
        if (params.get("call") && !autoCalled) {
          autoCalled = true;
          $("target").value = params.get("call");
          call();
        }
      },
      onUnregistered: () => {
        registered = false;
        setStatus("unregistered", "not registered");
        buttons({ registered: false, inCall: false, ringing: false });
        log("unregistered");
      },
      onCallReceived: () => {
        setStatus("ringing", "incoming call");
        buttons({ registered, inCall: false, ringing: true });
        log("incoming call");
        if (params.get("answer") === "1") phone.answer().catch((e) => log(`answer failed: ${e}`));
      },
      onCallAnswered: () => {
        setStatus("in-call", "in call");
        buttons({ registered, inCall: true, ringing: false });
        log("call answered");
        callAnswered();
      },
      onCallHangup: () => {
        setStatus(registered ? "registered" : "unregistered", registered ? "registered" : "not registered");
        buttons({ registered, inCall: false, ringing: false });
        callEnded();
        log("call ended");
      },
    },
  });
  setStatus("connecting", "connecting");
  try {
    await phone.connect();
    await phone.register({
      requestDelegate: {
        onReject: (response) => {
          setStatus("failed", `registration failed: ${response.message.statusCode} ${response.message.reasonPhrase}`);
          log(`REGISTER rejected: ${response.message.statusCode} ${response.message.reasonPhrase}`);
        },
      },
    });
  } catch (err) {
    setStatus("failed", `error: ${err.message || err}`);
    log(`error: ${err.message || err}`);
  }
}

async function unregister() {
  if (!phone) return;
  try {
    await phone.unregister();
    await phone.disconnect();
  } catch (err) {
    log(`error: ${err.message || err}`);
  }
}

async function call() {
  let target = $("target").value.trim();
  if (!target) return;
  if (!target.includes("@")) target += `@${$("domain").value.trim()}`;
  log(`calling ${target}`);
  buttons({ registered, inCall: true, ringing: false });
  try {
    await phone.call(`sip:${target}`);
  } catch (err) {
    log(`call failed: ${err.message || err}`);
    buttons({ registered, inCall: false, ringing: false });
  }
}

$("register").addEventListener("click", register);
$("unregister").addEventListener("click", unregister);
$("call").addEventListener("click", call);
$("answer").addEventListener("click", () => phone && phone.answer().catch((e) => log(`answer failed: ${e}`)));
$("hangup").addEventListener("click", () => phone && phone.hangup().catch((e) => log(`hangup failed: ${e}`)));

// Prefill from the query string (handy for bookmarks and for the browser test).
for (const key of ["server", "user", "domain", "password", "target"]) {
  if (params.has(key)) $(key).value = params.get(key);
}
buttons({ registered: false, inCall: false, ringing: false });
if (params.get("register") === "1") register();
