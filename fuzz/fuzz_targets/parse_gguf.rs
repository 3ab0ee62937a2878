//! Any bytes into the GGUF parser: it must refuse or accept, never panic,
//! hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shardload_gguf::parse(std::path::Path::new("fuzz.gguf"), data);
});
