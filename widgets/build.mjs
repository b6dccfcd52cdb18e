// Bundle each widget into ONE self-contained ES module (+ one CSS file) that anywidget loads as
// `_esm` / `_css`. The output is committed, so `pip install nbserve` needs no Node.
//
// usage:  npm ci && node build.mjs [outdir]      (default outdir: ../nbserve/widgets/static)
import * as esbuild from "esbuild";
import { statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = resolve(process.argv[2] || join(here, "..", "nbserve", "widgets", "static"));

const widgets = {
  ensemble_builder: { js: "src/ensemble_builder.jsx", css: "src/ensemble_builder.css" },
};

const common = {
  absWorkingDir: here,
  bundle: true,
  minify: true,
  legalComments: "none",
  logLevel: "warning",
};

for (const [name, entry] of Object.entries(widgets)) {
  const t0 = Date.now();
  const js = join(outdir, `${name}.js`);
  const css = join(outdir, `${name}.css`);
  await esbuild.build({
    ...common,
    entryPoints: [entry.js],
    outfile: js,
    format: "esm",
    target: "es2020",
    jsx: "automatic", // React 17+ runtime: no `import React` in every file
    // React ships development checks behind this flag; the bundle is the production build.
    define: { "process.env.NODE_ENV": '"production"' },
  });
  // @xyflow/react's stylesheet is @import-ed by ours and inlined here.
  await esbuild.build({ ...common, entryPoints: [entry.css], outfile: css });
  console.log(`${name}: ${statSync(js).size} B js, ${statSync(css).size} B css in ${Date.now() - t0} ms -> ${outdir}`);
}
