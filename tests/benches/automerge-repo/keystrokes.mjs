// The baseline of the keystroke benchmark (tests/benches/keystrokes.rs):
// automerge-repo's own setup for two people on one text — a sync server
// and two client repos over WebSockets on loopback. Client A inserts N
// characters at the end of the text, one every EVERY ms; each is timed
// until client B's document has it. Prints {"p50_ms", "p99_ms", "n"}.
import * as A from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import {
  NodeWSServerAdapter,
  WebSocketClientAdapter,
} from "@automerge/automerge-repo-network-websocket";
import { WebSocketServer } from "ws";

const N = Number(process.argv[2] ?? 500);
const EVERY = Number(process.argv[3] ?? 40);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
await new Promise((r) => wss.on("listening", r));
const url = `ws://127.0.0.1:${wss.address().port}`;
const server = new Repo({
  network: [new NodeWSServerAdapter(wss)],
  peerId: "server",
  sharePolicy: async () => true,
});
const a = new Repo({ network: [new WebSocketClientAdapter(url)], peerId: "a" });
const b = new Repo({ network: [new WebSocketClientAdapter(url)], peerId: "b" });

const start = "start";
const ha = a.create({ text: start });
await sleep(500);
const hb = await b.find(ha.url);
if (hb.whenReady) await hb.whenReady();

const seen = new Map();
hb.on("change", ({ doc }) => {
  const len = doc.text.length;
  if (!seen.has(len)) seen.set(len, performance.now());
});

const sent = [];
for (let i = 0; i < N; i++) {
  await sleep(EVERY);
  sent.push(performance.now());
  ha.change((d) => A.splice(d, ["text"], d.text.length, 0, "k"));
}
const deadline = performance.now() + 10_000;
while (!seen.has(start.length + N) && performance.now() < deadline) await sleep(10);

const lat = [];
const lens = [...seen.keys()].sort((x, y) => x - y);
for (let k = 1; k <= N; k++) {
  const len = lens.find((l) => l >= start.length + k);
  if (len !== undefined) lat.push(seen.get(len) - sent[k - 1]);
}
lat.sort((x, y) => x - y);
const at = (q) => lat[Math.round((lat.length - 1) * q)];
console.log(JSON.stringify({ p50_ms: at(0.5), p99_ms: at(0.99), n: lat.length, of: N }));
for (const r of [a, b, server]) r.shutdown?.();
wss.close();
process.exit(0);
