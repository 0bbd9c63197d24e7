// Builds the editor page, server/static/editor.html: src/index.html with src/style.css and
// the bundle of src/main.js inlined (the App CSP allows inline script and style only). The
// page records the hash of its sources; tests/test_app_build.py recomputes it, so a build
// older than its sources fails the tests. Run: make ui (or: node ui/build.mjs).

import { createHash } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const UI = dirname(fileURLToPath(import.meta.url));
const OUT = join(UI, "..", "server", "static", "editor.html");
/** What the page is built from, besides src/: this script and the pinned toolchain. */
const EXTRA = ["build.mjs", "package.json", "package-lock.json"];

function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    return entry.isDirectory() ? files(path) : [path];
  });
}

/** sha256 over each source's path (relative to ui/, sorted), length and bytes. */
export function sourcesHash() {
  const paths = [...files(join(UI, "src")).map((p) => relative(UI, p)), ...EXTRA]
    .map((p) => p.split("\\").join("/"))
    .sort();
  const hash = createHash("sha256");
  for (const path of paths) {
    const bytes = readFileSync(join(UI, path));
    hash.update(`${path}\n${bytes.length}\n`);
    hash.update(bytes);
  }
  return hash.digest("hex");
}

async function build() {
  const script = await esbuild.build({
    entryPoints: [join(UI, "src", "main.js")],
    bundle: true,
    format: "iife",
    minify: true,
    target: "es2022",
    legalComments: "none",
    write: false,
  });
  const css = readFileSync(join(UI, "src", "style.css"), "utf8");
  const style = await esbuild.transform(css, { loader: "css", minify: true });
  const js = script.outputFiles[0].text.trim();
  const page = readFileSync(join(UI, "src", "index.html"), "utf8")
    .replace(
      "<!-- build: style -->",
      () =>
        `<meta name="retouch-ui-sources" content="sha256:${sourcesHash()}">\n` +
        `<style>${style.code.trim()}</style>`,
    )
    .replace("<!-- build: script -->", () => `<script>${js}</script>`);
  writeFileSync(OUT, page);
  console.log(`${relative(process.cwd(), OUT)}: ${page.length} bytes`);
}

await build();
