// JsSIP registers over WebSocket with SIP Outbound (reg-id + +sip.instance + Supported: outbound)
// and reports the final response; with --password it answers the digest challenge.
// Usage: node jssip_register.mjs --ws ws://127.0.0.1:PORT [--user alice] [--password X]
// Result line (stdout, "RESULT " prefix): JSON report (see jssipRegisterReport in clients.mjs).

import { options, finish, watchdog } from "./common.mjs";
import { startJssip, jssipRegisterReport } from "./clients.mjs";

const opts = options({ instance: { type: "string", default: "5c1a1b0e-6b7e-4a55-9c52-2f4b8f0a1001" } });
let started = null;
watchdog(Number(opts.timeout), () => (started ? jssipRegisterReport(started) : { library: "jssip" }));

started = await startJssip({
  wsUrl: opts.ws,
  user: opts.user,
  domain: opts.domain,
  password: opts.password,
  instanceId: opts.instance,
});
const report = jssipRegisterReport(started);
report.instance = opts.instance;
started.ua.stop(); // a clean unregister after the report is taken; the process exits anyway
finish(report);
