// A crossws instance on Node, for the interoperability test: it joins a Redis
// or Postgres channel with crossws's own sync driver, prints every message it
// receives as a JSON line, and publishes every JSON line it reads.
//
//   node crossws-peer.mjs redis|postgres URL CHANNEL
//
// EDGESYNC_CROSSWS_NODE_MODULES names the node_modules folder that holds
// crossws, redis and pg.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import readline from "node:readline";

const req = createRequire(process.env.EDGESYNC_CROSSWS_NODE_MODULES + "/");
const sync = await import(pathToFileURL(req.resolve("crossws/sync")).href);
const [backend, url, channel] = process.argv.slice(2);
const id = "crossws-node-" + process.pid;

let adapter, close;
if (backend === "redis") {
  const { createClient } = req("redis");
  const client = createClient({ url });
  await client.connect();
  adapter = sync.redis({ client, channel })({ id });
  close = async () => { await adapter.close(); await client.quit(); };
} else {
  const { Client } = req("pg");
  const client = new Client({ connectionString: url });
  await client.connect();
  adapter = sync.pgsql({ client, channel })({ id });
  close = async () => { await adapter.close(); await client.end(); };
}

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
await adapter.subscribe((msg) => {
  const binary = msg.data instanceof Uint8Array;
  out({
    namespace: msg.namespace,
    topic: msg.topic,
    binary,
    data: binary ? Buffer.from(msg.data).toString("base64") : msg.data,
  });
});
out({ ready: true });

for await (const line of readline.createInterface({ input: process.stdin })) {
  const m = JSON.parse(line);
  const data = m.binary ? new Uint8Array(Buffer.from(m.data, "base64")) : m.data;
  await adapter.publish({ namespace: m.namespace, topic: m.topic, data });
}
await close();
