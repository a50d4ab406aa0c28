//! Builds the dashboard in `web/` with npm and esbuild into OUT_DIR, where `lib.rs` embeds
//! it, so `cargo build` alone gives a binary with its dashboard inside.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    for input in ["src", "package.json", "package-lock.json", "build.mjs"] {
        println!("cargo:rerun-if-changed={}", web.join(input).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("web");

    if !web.join("node_modules/.package-lock.json").exists() {
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&web), "npm ci");
    }
    run(Command::new("node").arg("build.mjs").env("PACER_WEB_OUT", &out).current_dir(&web), "node build.mjs");
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("building the dashboard: `{what}` in web/ failed ({s}); run it there to see why"),
        Err(e) => panic!("building the dashboard needs Node.js and npm on PATH: `{what}` could not start: {e}"),
    }
}
