//! Hostile files: every class of malformed GGUF is refused with an error that
//! names the field and the byte offset; nothing panics or allocates unboundedly.

use std::path::Path;

use shardload_gguf::{Error, parse};

/// Assembles GGUF bytes by hand, including values no honest writer produces.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        let mut raw = Raw(b"GGUF".to_vec());
        raw.u32(version).u64(tensors).u64(kvs);
        raw
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    /// A tensor info: name, dims, type id, offset.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn at(&self) -> u64 {
        self.0.len() as u64
    }
    /// Pads to 32 and appends `data` zero bytes of tensor data.
    fn data(&mut self, data: usize) -> &mut Self {
        let padded = self.0.len().next_multiple_of(32);
        self.0.resize(padded + data, 0);
        self
    }
}

fn refused(raw: &Raw) -> Error {
    parse(Path::new("evil.gguf"), &raw.0).expect_err("a hostile file must be refused")
}

#[track_caller]
fn assert_refused(raw: &Raw, field: &str, offset: u64, message: &str) {
    let error = refused(raw);
    let text = error.to_string();
    assert!(text.starts_with("evil.gguf: "), "{text}");
    assert!(
        error.field.contains(field),
        "field {:?} lacks {field:?}: {text}",
        error.field
    );
    assert_eq!(error.offset, offset, "{text}");
    assert!(text.contains(message), "{text} lacks {message:?}");
}

#[test]
fn a_file_with_another_magic_is_not_gguf() {
    assert_refused(
        &Raw(b"PK\x03\x04 this is a zip".to_vec()),
        "magic",
        0,
        "not a GGUF file",
    );
}

#[test]
fn gguf_v1_is_refused_by_version() {
    assert_refused(&Raw::header(1, 0, 0), "version", 4, "v1");
}

#[test]
fn big_endian_gguf_is_refused_as_such() {
    assert_refused(
        &Raw::header(3u32.swap_bytes(), 0, 0),
        "version",
        4,
        "big-endian",
    );
    assert_refused(&Raw(b"FUGG\0\0\0\x03".to_vec()), "magic", 0, "big-endian");
}

#[test]
fn a_huge_tensor_count_is_refused_before_allocating() {
    assert_refused(
        &Raw::header(3, u64::MAX, 0),
        "tensor_count",
        8,
        "cannot fit",
    );
}

#[test]
fn a_huge_metadata_count_is_refused_before_allocating() {
    assert_refused(
        &Raw::header(3, 0, 1 << 60),
        "metadata_kv_count",
        16,
        "cannot fit",
    );
}

#[test]
fn a_huge_string_length_is_refused() {
    let mut raw = Raw::header(3, 0, 1);
    raw.u64(u64::MAX - 3).u64(0).u64(0);
    assert_refused(&raw, "metadata key 0", 24, "cannot fit");
}

#[test]
fn a_huge_array_count_is_refused() {
    let mut raw = Raw::header(3, 0, 1);
    raw.str("tokenizer.ggml.tokens").u32(9).u32(8);
    let at = raw.at();
    raw.u64(1 << 61);
    assert_refused(&raw, "metadata tokenizer.ggml.tokens", at, "cannot fit");
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut raw = Raw::header(3, 0, 1);
    raw.str("deep").u32(9);
    for _ in 0..20 {
        raw.u32(9).u64(1);
    }
    let error = refused(&raw);
    assert!(error.to_string().contains("nest deeper"), "{error}");
}

#[test]
fn an_unknown_value_type_is_refused() {
    let mut raw = Raw::header(3, 0, 1);
    raw.str("general.name");
    let at = raw.at() + 4;
    raw.u32(13).u64(0);
    assert_refused(&raw, "metadata general.name", at, "unknown value type 13");
}

#[test]
fn a_bool_that_is_neither_0_nor_1_is_refused() {
    let mut raw = Raw::header(3, 0, 1);
    raw.str("flag").u32(7);
    let at = raw.at();
    raw.0.push(2);
    assert_refused(&raw, "metadata flag", at, "not 0 or 1");
    let error = refused(&raw).to_string();
    for says in [
        "GGUF spec",
        "GGUF_METADATA_VALUE_TYPE_BOOL",
        "llama.cpp and gguf-py are lenient",
    ] {
        assert!(error.contains(says), "{error}");
    }
}

#[test]
fn duplicate_metadata_keys_are_refused() {
    let mut raw = Raw::header(3, 0, 2);
    raw.str("a").u32(4).u32(1);
    let at = raw.at();
    raw.str("a").u32(4).u32(2);
    assert_refused(&raw, "metadata key 1", at, "duplicate key a");
}

#[test]
fn an_alignment_that_is_not_a_power_of_two_is_refused() {
    for bad in [0, 3, 48] {
        let mut raw = Raw::header(3, 0, 1);
        raw.str("general.alignment").u32(4).u32(bad);
        assert_refused(&raw, "general.alignment", 0, "not a power of two");
    }
}

#[test]
fn unknown_and_removed_tensor_types_are_refused_the_removed_by_name() {
    for (id, message) in [
        (99, "unknown ggml type id 99"),
        (4, "Q4_2"),
        (31, "Q4_0_4_4"),
    ] {
        let mut raw = Raw::header(3, 1, 0);
        let at = raw.at() + 8 + 1 + 4 + 8;
        raw.tensor("t", &[32], id, 0).data(64);
        assert_refused(&raw, "tensor 0 (t) type", at, message);
    }
}

#[test]
fn more_than_four_dims_are_refused() {
    let mut raw = Raw::header(3, 1, 0);
    let at = raw.at() + 8 + 1;
    raw.tensor("t", &[1, 1, 1, 1, 1], 0, 0).data(64);
    assert_refused(&raw, "tensor 0 (t) n_dims", at, "5 dims");
}

#[test]
fn a_dimension_product_that_overflows_is_refused() {
    let mut raw = Raw::header(3, 1, 0);
    let at = raw.at() + 8 + 1;
    raw.tensor("t", &[1 << 40, 1 << 40], 0, 0).data(64);
    assert_refused(&raw, "tensor 0 (t) dims", at, "overflow");
}

#[test]
fn a_row_that_is_not_whole_blocks_is_refused() {
    let mut raw = Raw::header(3, 1, 0);
    let at = raw.at() + 8 + 1;
    raw.tensor("t", &[33], 2, 0).data(64);
    assert_refused(&raw, "tensor 0 (t) dims", at, "whole 32-element blocks");
}

#[test]
fn a_name_over_64_bytes_is_refused() {
    let name = "x".repeat(65);
    let mut raw = Raw::header(3, 1, 0);
    let at = raw.at();
    raw.tensor(&name, &[8], 0, 0).data(64);
    assert_refused(&raw, "name", at, "65 bytes, over 64");
}

#[test]
fn a_name_that_is_not_utf8_is_refused() {
    let mut raw = Raw::header(3, 1, 0);
    let at = raw.at();
    raw.bytes(b"bad\xff").u32(1).u64(8).u32(0).u64(0);
    raw.data(64);
    assert_refused(&raw, "tensor 0 name", at, "not valid UTF-8");
}

#[test]
fn duplicate_tensor_names_are_refused() {
    let mut raw = Raw::header(3, 2, 0);
    raw.tensor("t", &[8], 0, 0);
    let at = raw.at();
    raw.tensor("t", &[8], 0, 32).data(64);
    assert_refused(&raw, "tensor 1 (t) name", at, "duplicates");
}

#[test]
fn a_misaligned_tensor_offset_is_refused() {
    let mut raw = Raw::header(3, 1, 0);
    let at = raw.at() + 8 + 1 + 4 + 8 + 4;
    raw.tensor("t", &[8], 0, 4).data(64);
    assert_refused(
        &raw,
        "tensor 0 (t) offset",
        at,
        "not a multiple of general.alignment 32",
    );
}

#[test]
fn a_tensor_past_the_end_of_the_file_is_refused() {
    let mut raw = Raw::header(3, 1, 0);
    let at = raw.at() + 8 + 1 + 4 + 8 + 4;
    raw.tensor("t", &[1024], 0, 0).data(100);
    assert_refused(&raw, "tensor 0 (t) offset", at, "run past the file");
    let mut raw = Raw::header(3, 1, 0);
    raw.tensor("t", &[8], 0, u64::MAX - 31).data(64);
    assert_refused(&raw, "tensor 0 (t) offset", at, "run past the file");
}

#[test]
fn a_last_tensor_without_its_alignment_padding_is_refused_as_llama_cpp_does() {
    // llama.cpp reads the data section as every tensor padded to the
    // alignment, the last one too (llama.cpp's tests/test-gguf.cpp,
    // DATA_NOT_ENOUGH_DATA): 8 f32 bytes short of 32 are not enough.
    let mut raw = Raw::header(3, 1, 0);
    let at = raw.at() + 8 + 1 + 4 + 8 + 4;
    raw.tensor("t", &[2], 0, 0).data(8);
    assert_refused(
        &raw,
        "tensor 0 (t) offset",
        at,
        "padded to the alignment 32",
    );
    raw.data(32);
    parse(Path::new("padded.gguf"), &raw.0).unwrap();
}

#[test]
fn overlapping_tensors_are_refused() {
    let mut raw = Raw::header(3, 2, 0);
    raw.tensor("a", &[64], 0, 0);
    let at = raw.at() + 8 + 1 + 4 + 8 + 4;
    raw.tensor("b", &[8], 0, 32).data(512);
    assert_refused(&raw, "tensor 1 (b) offset", at, "overlaps");
}

#[test]
fn a_data_section_past_the_end_of_the_file_is_refused() {
    let mut raw = Raw::header(3, 1, 1);
    raw.str("general.alignment").u32(4).u32(1 << 30);
    raw.tensor("t", &[32], 0, 0);
    let at = raw.at();
    assert_refused(&raw, "tensor data", at, "past the end");
}

#[test]
fn a_file_without_tensors_needs_no_data_section() {
    // A vocabulary-only file, as llama.cpp's tokenizer tooling ships them:
    // nothing past the metadata, whatever the alignment asks.
    let mut raw = Raw::header(3, 0, 1);
    raw.str("general.alignment").u32(4).u32(1 << 30);
    let header = parse(Path::new("vocab.gguf"), &raw.0).expect("a vocabulary-only file");
    assert!(header.tensors.is_empty());
    assert_eq!(header.data_offset, raw.at());
}

#[test]
fn a_truncated_real_header_is_refused_at_every_cut() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path).expect("run scripts/fetch-models");
    let header = shardload_gguf::parse(&path, &bytes).unwrap().data_offset as usize;
    // Every cut in the first 4 KiB, then cuts spread over the whole header.
    let cuts = (0..4096).chain((4096..header).step_by(header / 500));
    for cut in cuts {
        assert!(
            parse(Path::new("cut.gguf"), &bytes[..cut]).is_err(),
            "cut at {cut} accepted"
        );
    }
}
