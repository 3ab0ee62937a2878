//! Hashes the guest generator's own sources (`src/` and `wat/`) into
//! `SOURCE_FINGERPRINT`, so a host can tell, without generating the module,
//! whether a compiled guest it cached came from this very generator.

use std::hash::{DefaultHasher, Hasher};
use std::path::Path;

fn main() {
    let mut files = Vec::new();
    for dir in ["src", "wat"] {
        println!("cargo:rerun-if-changed={dir}");
        for entry in std::fs::read_dir(dir).expect("guest sources") {
            let path = entry.expect("guest source").path();
            let source = path.extension().is_some_and(|e| e == "rs" || e == "wat");
            if path.is_file() && source {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in &files {
        hasher.write(file.to_string_lossy().as_bytes());
        hasher.write(&std::fs::read(file).expect("a guest source file"));
    }
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("fingerprint.rs");
    std::fs::write(
        out,
        format!("const SOURCE_FINGERPRINT: u64 = {:#x};\n", hasher.finish()),
    )
    .expect("write the fingerprint");
}
