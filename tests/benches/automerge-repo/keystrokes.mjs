// The baseline of the keystroke benchmark (tests/benches/keystrokes.rs):
// automerge-repo's own setup for two people on one text — a sync server
// and two client repos over WebSockets on loopback. Client A inserts N
// characters at the end of the text, one every EVERY ms; each is timed
// until client B's document has it. Prints {"p50_ms", "p99_ms", "n"}.
import * as A from "@automerge/automerge";
import { pair, sleep } from "./pair.mjs";

const N = Number(process.argv[2] ?? 500);
const EVERY = Number(process.argv[3] ?? 40);

const start = "start";
const { ha, hb, close } = await pair({ text: start });

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
close();
process.exit(0);
