//! The checked GGUF parser.
//!
//! A model file comes from the internet: every count, length, dimension,
//! offset and size is checked before use, allocations are bounded by the bytes
//! that remain, and a bad file gets an [`Error`] naming the file, the field and
//! the byte offset. (llama.cpp's parser had heap-overflow CVEs in 2024 from
//! crafted counts, lengths and dimensions.)

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{GgmlType, Value, tensor_bytes};

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest tensor name llama.cpp accepts, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// Deepest array nesting accepted: deeper is hostile (and would recurse deeply).
const MAX_ARRAY_DEPTH: usize = 8;
/// Why a bool byte other than 0 or 1 is refused, in the error after the value.
const BOOL_RULE: &str = "not 0 or 1: the GGUF spec (GGUF_METADATA_VALUE_TYPE_BOOL) \
    says \"1-byte value where 0 is false and 1 is true. Anything else is invalid\"; \
    llama.cpp and gguf-py are lenient and read any other byte as true";
/// Most metadata values (array elements included) a file may hold: a large
/// tokenizer holds about a million, and each costs memory whatever its size.
const MAX_METADATA_VALUES: u64 = 16 << 20;

/// Why a GGUF file was refused: which file, which field, at which byte.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {field} at byte {offset}: {message}")]
pub struct Error {
    /// The file.
    pub path: String,
    /// The field being read (`tensor 12 (blk.0.attn_q.weight) dims`).
    pub field: String,
    /// Byte offset of the field in the file.
    pub offset: u64,
    /// What is wrong, and where possible what to do.
    pub message: String,
}

/// One tensor's description from the GGUF header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in GGUF order: ne0 (the row length) first; 1 to 4 of them.
    pub dims: Vec<u64>,
    /// The ggml type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section, as stored.
    pub offset: u64,
    /// Size of the data in bytes.
    pub bytes: u64,
}

/// A parsed, validated GGUF header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// Absolute file offset of the tensor data section.
    pub data_offset: u64,
}

/// Reads fields from the file's bytes, refusing to step past their end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
    values_left: u64,
}

impl<'a> Cursor<'a> {
    fn error(&self, at: usize, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            path: self.path.display().to_string(),
            field: field.into(),
            offset: at as u64,
            message: message.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, field: &dyn Fn() -> String) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            let message = format!(
                "needs {n} bytes but the file ends {} bytes later",
                self.remaining()
            );
            return Err(self.error(self.at, field(), message));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], Error> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, Error> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, Error> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// A count of items each at least `min_bytes` long, checked against what remains.
    fn count(&mut self, min_bytes: usize, field: &dyn Fn() -> String) -> Result<usize, Error> {
        let at = self.at;
        let count = self.u64(field)?;
        if count > (self.remaining() / min_bytes.max(1)) as u64 {
            let message = format!(
                "count {count} cannot fit in the {} bytes that remain",
                self.remaining()
            );
            return Err(self.error(at, field(), message));
        }
        Ok(count as usize)
    }

    fn string_bytes(&mut self, field: &dyn Fn() -> String) -> Result<&'a [u8], Error> {
        let length = self.count(1, field)?;
        self.take(length, field)
    }

    /// A string that must be valid UTF-8 (keys and tensor names).
    fn utf8(&mut self, field: &dyn Fn() -> String) -> Result<String, Error> {
        let at = self.at;
        let bytes = self.string_bytes(field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error(at, field(), "is not valid UTF-8"))
    }

    fn value(
        &mut self,
        type_id: u32,
        depth: usize,
        field: &dyn Fn() -> String,
    ) -> Result<Value, Error> {
        let at = self.at;
        if self.values_left == 0 {
            return Err(self.error(
                at,
                field(),
                format!("the file holds more than {MAX_METADATA_VALUES} values"),
            ));
        }
        self.values_left -= 1;
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(field)?[0]),
            1 => Value::I8(self.array::<1>(field)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            4 => Value::U32(self.u32(field)?),
            5 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            7 => match self.array::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => {
                    // Stricter than llama.cpp and gguf-py, on purpose: see BOOL_RULE.
                    return Err(self.error(at, field(), format!("bool is {other}, {BOOL_RULE}")));
                }
            },
            8 => {
                // Valid UTF-8 (nearly every string) is checked by the fast
                // validator and copied once; only the rest pays for lossy repair.
                let bytes = self.string_bytes(field)?;
                Value::String(match std::str::from_utf8(bytes) {
                    Ok(text) => text.to_owned(),
                    Err(_) => String::from_utf8_lossy(bytes).into_owned(),
                })
            }
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.error(
                        at,
                        field(),
                        format!("arrays nest deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let element_type = self.u32(field)?;
                let min_bytes = match element_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(self.error(
                            at,
                            field(),
                            format!("unknown array element type {other}"),
                        ));
                    }
                };
                let count = self.count(min_bytes, field)?;
                let mut items = Vec::with_capacity(count.min(1 << 16));
                for i in 0..count {
                    items.push(
                        self.value(element_type, depth + 1, &|| format!("{}[{i}]", field()))?,
                    );
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(field)?),
            11 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            other => return Err(self.error(at, field(), format!("unknown value type {other}"))),
        })
    }
}

/// Parses and validates a GGUF header from a file's bytes. Pure: the fuzz
/// target and the property tests call it on arbitrary bytes.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Header, Error> {
    let mut c = Cursor {
        bytes,
        at: 0,
        path,
        values_left: MAX_METADATA_VALUES,
    };
    let magic = c.array::<4>(&|| "magic".into())?;
    if &magic != b"GGUF" {
        let message = if &magic == b"FUGG" {
            "big-endian GGUF is not supported; convert it with gguf-py's gguf_convert_endian.py"
                .to_string()
        } else {
            format!("magic is {magic:02x?}, not \"GGUF\": this is not a GGUF file")
        };
        return Err(c.error(0, "magic", message));
    }
    let version = c.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.error(
                4,
                "version",
                "GGUF v1 (32-bit counts) is not supported; re-convert the model",
            ));
        }
        v if matches!(v.swap_bytes(), 1..=3) => {
            let message = "big-endian GGUF is not supported; convert it with gguf-py's gguf_convert_endian.py";
            return Err(c.error(4, "version", message));
        }
        v => return Err(c.error(4, "version", format!("unsupported GGUF version {v}"))),
    }
    // Minimum encoded sizes: a tensor info is a name length, one dim, a type
    // and an offset (32 bytes); a key-value is a key length, a type and one byte.
    let tensor_count = c.count(32, &|| "tensor_count".into())?;
    let kv_count = c.count(13, &|| "metadata_kv_count".into())?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count);
    let mut keys = HashSet::with_capacity(kv_count);
    for i in 0..kv_count {
        let at = c.at;
        let key = c.utf8(&|| format!("metadata key {i}"))?;
        if !keys.insert(key.clone()) {
            return Err(c.error(
                at,
                format!("metadata key {i}"),
                format!("duplicate key {key}"),
            ));
        }
        let type_id = c.u32(&|| format!("metadata {key} type"))?;
        let value = c.value(type_id, 0, &|| format!("metadata {key}"))?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, value)) => match value.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(c.error(
                    0,
                    "metadata general.alignment",
                    format!("{value:?} is not a power of two"),
                ));
            }
        },
    };

    let mut tensors = Vec::with_capacity(tensor_count);
    let mut names = HashSet::with_capacity(tensor_count);
    let mut starts = Vec::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let at = c.at;
        let name = c.utf8(&|| format!("tensor {i} name"))?;
        let what = format!("tensor {i} ({name})");
        if name.len() > MAX_NAME_BYTES {
            return Err(c.error(
                at,
                format!("{what} name"),
                format!("is {} bytes, over {MAX_NAME_BYTES}", name.len()),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(c.error(
                at,
                format!("{what} name"),
                "duplicates an earlier tensor's name",
            ));
        }
        let dims_at = c.at;
        let n_dims = c.u32(&|| format!("{what} n_dims"))? as usize;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(c.error(
                dims_at,
                format!("{what} n_dims"),
                format!("{n_dims} dims; 1 to {MAX_DIMS} allowed"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("{what} dim {d}"))?);
        }
        let type_at = c.at;
        let ty = GgmlType::from_id(c.u32(&|| format!("{what} type"))?)
            .map_err(|message| c.error(type_at, format!("{what} type"), message))?;
        let bytes = tensor_bytes(ty, &dims).ok_or_else(|| {
            let message = format!(
                "dims {dims:?} of type {} are not whole {}-element blocks or overflow 64 bits",
                ty.name(),
                ty.block_size()
            );
            c.error(dims_at, format!("{what} dims"), message)
        })?;
        let offset_at = c.at;
        let offset = c.u64(&|| format!("{what} offset"))?;
        if !offset.is_multiple_of(alignment) {
            let message = format!("{offset} is not a multiple of general.alignment {alignment}");
            return Err(c.error(offset_at, format!("{what} offset"), message));
        }
        starts.push((offset, bytes, offset_at, i));
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            bytes,
        });
    }

    let header_end = c.at as u64;
    let file_size = bytes.len() as u64;
    if tensors.is_empty() {
        // A vocabulary-only file (llama.cpp's tokenizer tooling ships them)
        // needs no data section: as llama.cpp, padding past the header is
        // optional, and the data offset is where padding would end, or the
        // end of the file.
        return Ok(Header {
            version,
            metadata,
            tensors,
            alignment,
            data_offset: header_end.next_multiple_of(alignment).min(file_size),
        });
    }
    let data_offset = header_end.next_multiple_of(alignment);
    if data_offset > file_size {
        let message = format!(
            "the data section would start at {data_offset}, past the end of the {file_size}-byte file"
        );
        return Err(c.error(c.at, "tensor data", message));
    }
    let data_size = file_size - data_offset;
    starts.sort_unstable();
    let mut previous_end = 0u64;
    for &(offset, size, offset_at, i) in &starts {
        let what = format!("tensor {i} ({}) offset", tensors[i].name);
        // As llama.cpp reads the data section: every tensor padded to the
        // alignment (its writers, and gguf-py's, pad the last one too).
        let end = offset.checked_add(size);
        let padded_end = end.and_then(|end| end.checked_next_multiple_of(alignment));
        let end = end
            .filter(|_| padded_end.is_some_and(|e| e <= data_size))
            .ok_or_else(|| {
                let message = format!(
                    "{size} bytes at data offset {offset}, padded to the alignment {alignment}, \
                     run past the file's {data_size} data bytes"
                );
                c.error(offset_at, what.clone(), message)
            })?;
        if offset < previous_end {
            return Err(c.error(offset_at, what, "overlaps another tensor's data"));
        }
        previous_end = end;
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// One mapped, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// The parsed header.
    pub header: Header,
}

impl GgufFile {
    /// Maps and validates a GGUF file. The header is parsed from the mapping;
    /// tensor data is not touched.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, Error> {
        let path = path.as_ref();
        let io_error = |e: std::io::Error| Error {
            path: path.display().to_string(),
            field: "file".into(),
            offset: 0,
            message: e.to_string(),
        };
        let file = File::open(path).map_err(io_error)?;
        let size = file.metadata().map_err(io_error)?.len();
        if size < 8 {
            return Err(Error {
                path: path.display().to_string(),
                field: "magic".into(),
                offset: 0,
                message: format!("the file is {size} bytes: too short for a GGUF header"),
            });
        }
        // SAFETY: the mapping is read-only; a file changed underneath it can
        // change what we read but the header is validated from one read.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        let header = parse(path, &map)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    /// The file's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// `general.architecture` (`llama`, `gemma3`).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture")?.as_str()
    }

    /// `{arch}.block_count`: the number of transformer blocks.
    pub fn block_count(&self) -> Option<u64> {
        self.get(&format!("{}.block_count", self.architecture()?))?
            .as_u64()
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }
}
