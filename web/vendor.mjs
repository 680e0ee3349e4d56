// Copy the pinned browser libraries (uPlot for the pages' charts, Swagger UI for /docs) from node_modules into server/static/vendor/
// (run by `make web` after `npm ci`; the copies are committed so `make run` needs no npm).
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "server", "static", "vendor");
mkdirSync(out, { recursive: true });

const files = [
  ["uplot/dist/uPlot.iife.min.js", "uPlot.iife.min.js"],
  ["uplot/dist/uPlot.min.css", "uPlot.min.css"],
  ["uplot/LICENSE", "uPlot.LICENSE"],
  // /docs (Swagger UI, served by the service itself so it works offline)
  ["swagger-ui-dist/swagger-ui-bundle.js", "swagger-ui-bundle.js"],
  ["swagger-ui-dist/swagger-ui-bundle.js.LICENSE.txt", "swagger-ui-bundle.js.LICENSE.txt"],
  ["swagger-ui-dist/swagger-ui.css", "swagger-ui.css"],
  ["swagger-ui-dist/LICENSE", "swagger-ui.LICENSE"],
  ["swagger-ui-dist/NOTICE", "swagger-ui.NOTICE"],
];
const versions = {};
for (const [src, dst] of files) copyFileSync(join(here, "node_modules", src), join(out, dst));
for (const name of ["uplot", "swagger-ui-dist"]) {
  versions[name] = JSON.parse(readFileSync(join(here, "node_modules", name, "package.json"), "utf8")).version;
}
writeFileSync(join(out, "VERSIONS.json"), JSON.stringify(versions, null, 2) + "\n");
console.log(`vendored ${Object.entries(versions).map(([k, v]) => `${k}@${v}`).join(", ")} into ${out}`);
