// Bundles the dashboard into one directory of static files. The pacer-web crate's build
// script runs this with PACER_WEB_OUT pointing into Cargo's OUT_DIR and embeds the result.
import * as esbuild from 'esbuild';
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';

const outdir = process.env.PACER_WEB_OUT || 'dist';
await mkdir(outdir, { recursive: true });
await esbuild.build({
  entryPoints: ['src/app.js'],
  bundle: true,
  minify: true,
  outdir,
  loader: { '.png': 'dataurl', '.svg': 'dataurl' },
  target: ['chrome100', 'firefox100', 'safari15'],
  logLevel: 'warning',
});
await copyFile('src/index.html', path.join(outdir, 'index.html'));
