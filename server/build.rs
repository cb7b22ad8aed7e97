//! Embeds the dashboards (`../dashboards/src` and uPlot from `../dashboards/node_modules`) in
//! the binary: each file with its content type, a gzip copy and an ETag, in
//! `$OUT_DIR/assets.rs`. Installs the npm packages of the committed lockfile first when they are
//! missing, so that a fresh clone builds with `cargo build` alone (npm must be on the PATH).

use std::io::Write;
use std::path::{Path, PathBuf};

fn mime(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.join("../dashboards");
    println!("cargo:rerun-if-changed=../dashboards/src");
    println!("cargo:rerun-if-changed=../dashboards/package-lock.json");
    let vendor = root.join("node_modules/uplot/dist");
    if !vendor.join("uPlot.iife.min.js").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&root)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => panic!(
                "the dashboards need their npm packages: `npm ci` in {} failed ({other:?}); install Node.js and npm",
                root.display()
            ),
        }
    }
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let src = root.join("src");
    let mut names: Vec<_> = std::fs::read_dir(&src)
        .expect("dashboards/src")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        files.push((n.clone(), src.join(&n)));
    }
    for n in ["uPlot.iife.min.js", "uPlot.min.css"] {
        files.push((format!("vendor/{n}"), vendor.join(n)));
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let dir = out.join("assets");
    std::fs::create_dir_all(dir.join("vendor")).expect("OUT_DIR is writable");
    let mut code =
        String::from("/// The embedded dashboard files.\npub static ASSETS: &[Asset] = &[\n");
    for (name, path) in &files {
        let body = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&body).expect("in memory");
        let gz = gz.finish().expect("in memory");
        let plain = dir.join(name);
        let zipped = dir.join(format!("{name}.gz"));
        std::fs::write(&plain, &body).expect("OUT_DIR is writable");
        std::fs::write(&zipped, &gz).expect("OUT_DIR is writable");
        use sha2::Digest;
        let hash = sha2::Sha256::digest(&body);
        let etag: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        code.push_str(&format!(
            "    Asset {{ name: {name:?}, mime: {:?}, etag: {etag:?}, body: include_bytes!({:?}), gzip: include_bytes!({:?}) }},\n",
            mime(name),
            path_str(&plain),
            path_str(&zipped),
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("assets.rs"), code).expect("OUT_DIR is writable");
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
