// What both automerge-repo baselines start from: a sync server and two
// client repos over WebSockets on loopback, client B holding the document
// client A created with `initial`.
import { Repo } from "@automerge/automerge-repo";
import {
  NodeWSServerAdapter,
  WebSocketClientAdapter,
} from "@automerge/automerge-repo-network-websocket";
import { WebSocketServer } from "ws";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function pair(initial) {
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
  const ha = a.create(initial);
  await sleep(500);
  const hb = await b.find(ha.url);
  if (hb.whenReady) await hb.whenReady();
  const close = () => {
    for (const r of [a, b, server]) r.shutdown?.();
    wss.close();
  };
  return { ha, hb, close };
}
