// Automerge documents made and read by the automerge npm package, for
// tests/tests/interop.rs. Prints JSON on stdout.
//
//   node automerge-docs.js make OUT        two authors take turns on `text`
//   node automerge-docs.js history IN [F]  the texts of IN's history, in order
//   node automerge-docs.js edit IN OUT     IN plus one change of this program's
"use strict";
const fs = require("fs");
const A = require("@automerge/automerge");

const [cmd, input, arg] = process.argv.slice(2);

function textsOf(doc, field) {
  const texts = [];
  for (const state of A.getHistory(doc)) {
    const t = state.snapshot[field];
    if (typeof t === "string" && texts[texts.length - 1] !== t) texts.push(t);
  }
  return texts;
}

if (cmd === "make") {
  const alice = "a11ce0000000000000000000000000a1";
  const bob = "b0b0000000000000000000000000b0b0";
  let a = A.from({ text: "", title: "Meeting notes" }, alice);
  let b = A.clone(a, bob);
  const steps = [
    [a, (d) => A.splice(d, ["text"], 0, 0, "Agenda\n")],
    [b, (d) => A.splice(d, ["text"], 7, 0, "- budget\n")],
    [a, (d) => A.splice(d, ["text"], 16, 0, "- hiring 🙂\n")],
    [b, (d) => A.splice(d, ["text"], 2, 4, "ENDA")],
    [a, (d) => A.splice(d, ["text"], 0, 0, "# ")],
  ];
  let time = 1700000000;
  steps.forEach(([_, fn], i) => {
    const mine = i % 2 === 0;
    let doc = mine ? a : b;
    doc = A.merge(doc, mine ? b : a);
    doc = A.change(doc, { message: `step ${i}`, time: time + i * 60 }, fn);
    if (mine) a = doc;
    else b = doc;
  });
  a = A.merge(a, b);
  fs.writeFileSync(input, A.save(a));
  console.log(JSON.stringify({ text: a.text, texts: textsOf(a, "text") }));
} else if (cmd === "history") {
  const doc = A.load(fs.readFileSync(input));
  const field = arg || "text";
  const actors = [...new Set(A.getHistory(doc).map((s) => s.change.actor))];
  const messages = A.getHistory(doc).map((s) => s.change.message || "");
  console.log(
    JSON.stringify({ text: doc[field], texts: textsOf(doc, field), actors, messages }),
  );
} else if (cmd === "edit") {
  let doc = A.load(fs.readFileSync(input));
  doc = A.change(doc, { message: "from JS" }, (d) =>
    A.splice(d, ["text"], d.text.length, 0, "\n(edited in JS)"),
  );
  fs.writeFileSync(arg, A.save(doc));
  console.log(JSON.stringify({ text: doc.text }));
} else {
  console.error("usage: automerge-docs.js make|history|edit ...");
  process.exit(2);
}
