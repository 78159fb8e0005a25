// SIP.js (UserAgent + Registerer with instanceId/regId) registers over WebSocket with SIP Outbound
// and reports the final response.
// Usage: node sipjs_register.mjs --ws ws://127.0.0.1:PORT [--user alice] [--password X]
// Result line (stdout, "RESULT " prefix): JSON report (see sipjsRegisterReport in clients.mjs).

import { options, finish, watchdog } from "./common.mjs";
import { startSipjs, sipjsRegisterReport } from "./clients.mjs";

const opts = options({ instance: { type: "string", default: "5c1a1b0e-6b7e-4a55-9c52-2f4b8f0a2002" } });
watchdog(Number(opts.timeout), () => ({ library: "sip.js" }));

const started = await startSipjs({
  wsUrl: opts.ws,
  user: opts.user,
  domain: opts.domain,
  password: opts.password,
  instanceId: opts.instance,
});
const report = sipjsRegisterReport(started);
report.instance = opts.instance;
finish(report);
