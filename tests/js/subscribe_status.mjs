// Subscribe to every model status change on modelbus's NATS and print each message as one JSON line.
//
//   node tests/js/subscribe_status.mjs nats://127.0.0.1:4222
//
// stdout: {"subject": "modelbus.v1.events.model.<encoded model>", "data": <the ModelStatusEvent>} per message.
// stderr: "subscribed <subject>" once the server has the subscription (so a caller knows nothing is missed
// from then on). SIGTERM or SIGINT drains the connection and exits 0.
import { connect, JSONCodec } from "nats";

const SUBJECT = "modelbus.v1.events.model.>";

const url = process.argv[2];
if (!url) {
  process.stderr.write("usage: node subscribe_status.mjs NATS_URL\n");
  process.exit(2);
}

const nc = await connect({ servers: url, name: "modelbus-js-status-subscriber" });
const codec = JSONCodec();
const sub = nc.subscribe(SUBJECT);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    nc.drain().catch(() => process.exit(1));
  });
}
await nc.flush(); // the server has processed the SUB
process.stderr.write(`subscribed ${SUBJECT}\n`);

for await (const msg of sub) {
  let data;
  try {
    data = codec.decode(msg.data);
  } catch (err) {
    process.stderr.write(`undecodable message on ${msg.subject}: ${err}\n`);
    continue;
  }
  process.stdout.write(JSON.stringify({ subject: msg.subject, data }) + "\n");
}
await nc.closed();
