// The baseline of the sync benchmark's live-edits row (node/benches/sync.rs):
// automerge-repo's own setup for two people on one text — a sync server and
// two client repos over WebSockets on loopback. Client A applies the edits
// of FILE ({"edits": [[pos, deleted, inserted], ...], "end": text}) in
// changes of BATCH edits, as fast as it can; timed from the first change
// until client B's document holds the final text. Prints {"secs", "ok"}.
import * as A from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import {
  NodeWSServerAdapter,
  WebSocketClientAdapter,
} from "@automerge/automerge-repo-network-websocket";
import { WebSocketServer } from "ws";
import { readFileSync } from "node:fs";

const FILE = process.argv[2];
const BATCH = Number(process.argv[3] ?? 100);
const { edits, end } = JSON.parse(readFileSync(FILE, "utf8"));
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

const ha = a.create({ text: "" });
await sleep(500);
const hb = await b.find(ha.url);
if (hb.whenReady) await hb.whenReady();

let reached = null;
hb.on("change", ({ doc }) => {
  if (reached === null && doc.text.length === end.length && doc.text === end) {
    reached = performance.now();
  }
});

const started = performance.now();
for (let i = 0; i < edits.length; i += BATCH) {
  ha.change((d) => {
    for (const [pos, del, ins] of edits.slice(i, i + BATCH)) {
      A.splice(d, ["text"], pos, del, ins);
    }
  });
  // Let the repo send what it has, as a client between keystrokes would.
  await new Promise((r) => setImmediate(r));
}
const deadline = performance.now() + 300_000;
while (reached === null && performance.now() < deadline) await sleep(5);
console.log(
  JSON.stringify({ secs: ((reached ?? performance.now()) - started) / 1000, ok: reached !== null }),
);
for (const r of [a, b, server]) r.shutdown?.();
wss.close();
process.exit(0);
