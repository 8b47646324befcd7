// Checks Flux scripts with the Flux language server's own checker (@influxdata/flux-lsp-browser:
// the Flux parser and type checker compiled to WebAssembly, with the standard library's
// signatures), for tests/e2e/test_dashboards.py.
//
// stdin: a JSON array of Flux scripts. stdout: a JSON array, per script `true` (it parses and
// type checks: known functions, argument names and types) or `false`.
//
// The package is built for bundlers (its glue imports the .wasm as a module); here the glue is
// loaded as it is, its one import of the .wasm replaced by the instance made below.
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const dir = path.dirname(require.resolve("@influxdata/flux-lsp-browser/package.json"));
const glue = fs
  .readFileSync(path.join(dir, "flux-lsp-browser_bg.js"), "utf8")
  .replace(
    /^import \* as wasm from .*$/m,
    "let wasm;\nexport function __setWasm(w) {\n  wasm = w;\n" +
      "  cachedInt32Memory0 = new Int32Array(w.memory.buffer);\n" +
      "  cachedUint8Memory0 = new Uint8Array(w.memory.buffer);\n}",
  )
  .replace(/^cached(Int32|Uint8)Memory0 = new .*$/gm, "");
const bg = await import("data:text/javascript;base64," + Buffer.from(glue).toString("base64"));
const module = await WebAssembly.compile(fs.readFileSync(path.join(dir, "flux-lsp-browser_bg.wasm")));
const wanted = new Set(WebAssembly.Module.imports(module).map((entry) => entry.module));
const instance = await WebAssembly.instantiate(
  module,
  Object.fromEntries([...wanted].map((name) => [name, bg])),
);
bg.__setWasm(instance.exports);

const scripts = JSON.parse(fs.readFileSync(0, "utf8"));
const results = scripts.map((script) => {
  const flux = new bg.Flux(script);
  try {
    return flux.is_valid();
  } finally {
    flux.free();
  }
});
process.stdout.write(JSON.stringify(results) + "\n");
