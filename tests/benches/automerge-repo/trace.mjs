// The baseline of the sync benchmark's live-edits row (node/benches/sync.rs):
// automerge-repo's own setup for two people on one text — a sync server and
// two client repos over WebSockets on loopback. Client A applies the edits
// of FILE ({"edits": [[pos, deleted, inserted], ...], "end": text}) in
// changes of BATCH edits, as fast as it can; timed from the first change
// until client B's document holds the final text. Prints {"secs", "ok"}.
import * as A from "@automerge/automerge";
import { pair, sleep } from "./pair.mjs";
import { readFileSync } from "node:fs";

const FILE = process.argv[2];
const BATCH = Number(process.argv[3] ?? 100);
const { edits, end } = JSON.parse(readFileSync(FILE, "utf8"));

const { ha, hb, close } = await pair({ text: "" });

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
close();
process.exit(0);
