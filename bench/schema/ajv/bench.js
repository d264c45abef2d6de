// ajv (compiled mode, draft 2020-12), bench/bench_schema's other reference:
// the same cases, files and method (payload parsed once, warm-up for a
// tenth of --seconds sizes a round to a third of it, three timed rounds,
// the median one), one JSON line per case, scenario "schema.ajv.KEY".
//   node bench/schema/ajv/bench.js [--dir bench/schema] [--seconds 3] [--only KEY]
"use strict";
const fs = require("fs");
const path = require("path");
const Ajv2020 = require("ajv/dist/2020");
const addFormats = require("ajv-formats");

const args = { dir: path.join(__dirname, ".."), seconds: "3", only: null };
for (let i = 2; i + 1 < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
const seconds = Number(args.seconds);
const read = (f) => fs.readFileSync(path.join(args.dir, f), "utf8");
const now = () => Number(process.hrtime.bigint()) / 1e9;

const manifest = JSON.parse(read("cases.json"));
for (const c of manifest.cases) {
  if (args.only && args.only !== c.key) continue;
  // strict: false accepts what loom's validator accepts (no unknown-format
  // or strictTypes complaints); allErrors false stops at the first error,
  // as loom__schema_validate without details does.
  const ajv = new Ajv2020({ strict: false, allErrors: false });
  addFormats(ajv);
  const validate = ajv.compile(JSON.parse(read(c.schema)));
  const text = read(c.payload);
  const value = JSON.parse(text);
  if (validate(value) !== c.valid) {
    process.stderr.write(`bench.js: ${c.key}: ajv's result differs from the case's "valid"\n`);
    process.exit(1);
  }
  let n = 0, t0 = now(), t, sink = 0;
  do {
    for (let k = 0; k < 100; k++) sink += validate(value) ? 1 : 0;
    n += 100;
  } while ((t = now() - t0) < seconds / 10);
  const round = Math.floor((n / t) * seconds / 3) + 1;
  const ns = [];
  for (let r = 0; r < 3; r++) {
    t0 = now();
    for (let k = 0; k < round; k++) sink += validate(value) ? 1 : 0;
    ns.push(((now() - t0) * 1e9) / round);
  }
  ns.sort((a, b) => a - b);
  if (sink < 0) process.stderr.write("");
  console.log(JSON.stringify({
    scenario: `schema.ajv.${c.key}`, ops: round, seconds: +(ns[1] * round / 1e9).toFixed(3),
    ops_per_s: Math.round(1e9 / ns[1]), ns_per_op: +ns[1].toFixed(1), bytes: Buffer.byteLength(text),
  }));
}
