// A crossws chat server on Node, for the mixed cluster test: crossws's own
// Node adapter and Redis or Postgres sync driver, on the channel of the Go
// chat. Every client is in the chat's namespace, /chat, and subscribed to its
// topic, chat; what a client sends, text or binary, is published there
// unchanged. It prints its address as one JSON line, {"addr":"HOST:PORT"},
// once it listens and is subscribed to the channel, and stops when its
// standard input closes.
//
//   node crossws-mixed.mjs redis|postgres URL CHANNEL
//
// EDGESYNC_CROSSWS_NODE_MODULES names the node_modules folder that holds
// crossws, redis and pg.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import http from "node:http";

const req = createRequire(process.env.EDGESYNC_CROSSWS_NODE_MODULES + "/");
const load = async (name) => import(pathToFileURL(req.resolve(name)).href);
const sync = await load("crossws/sync");
const nodeAdapter = (await load("crossws/adapters/node")).default;
const [backend, url, channel] = process.argv.slice(2);

let driver, closeClient;
if (backend === "redis") {
  const { createClient } = req("redis");
  const client = createClient({ url });
  await client.connect();
  driver = sync.redis({ client, channel });
  closeClient = () => client.quit();
} else {
  const { Client } = req("pg");
  const client = new Client({ connectionString: url });
  await client.connect();
  driver = sync.pgsql({ client, channel });
  closeClient = () => client.end();
}

// The adapter subscribes to the channel without waiting: the address is
// printed once the subscription is made, so that the server is ready for
// what the Go instances publish when the test reads it.
let subscribed;
const ready = (ctx) => {
  const d = driver(ctx);
  return {
    subscribe: (deliver) => (subscribed = Promise.resolve(d.subscribe(deliver))),
    publish: (msg) => d.publish(msg),
    close: () => d.close?.(),
  };
};

const ws = nodeAdapter({
  sync: ready,
  getNamespace: () => "/chat",
  hooks: {
    open(peer) {
      peer.subscribe("chat");
    },
    message(peer, message) {
      peer.publish("chat", message.rawData); // a string or a Buffer: text or binary
    },
  },
});

const server = http.createServer((_, res) => {
  res.statusCode = 404;
  res.end();
});
server.on("upgrade", (request, socket, head) => ws.handleUpgrade(request, socket, head));
server.listen(0, "127.0.0.1", async () => {
  await subscribed;
  const { address, port } = server.address();
  process.stdout.write(JSON.stringify({ addr: `${address}:${port}` }) + "\n");
});

process.stdin.resume();
process.stdin.on("end", async () => {
  ws.closeAll(1001, "going away", true);
  server.close();
  await ws.close();
  await closeClient();
});
