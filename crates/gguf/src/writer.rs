//! A small GGUF v3 writer, for tests and synthetic models.
//!
//! It lays tensors out as gguf-py and llama.cpp do (each at the next multiple
//! of the alignment). Without data it leaves the data section as a hole, so a
//! 42 GB synthetic model is a sparse file that costs no disk.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{DEFAULT_ALIGNMENT, GgmlType, Value, tensor_bytes};

/// Collects metadata and tensor descriptions, then writes the file.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, GgmlType, Vec<u64>)>,
}

/// Where everything lands in the written file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterLayout {
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Each tensor's offset relative to the data section.
    pub offsets: Vec<u64>,
    /// Each tensor's size in bytes.
    pub sizes: Vec<u64>,
    /// The whole file's size.
    pub file_size: u64,
}

/// Produces tensor bytes for [`GgufWriter::write`]: called with the tensor's
/// index, the offset within the tensor, and the buffer to fill.
pub type Fill<'a> = &'a mut dyn FnMut(usize, u64, &mut [u8]);

impl GgufWriter {
    /// An empty v3 file.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds a metadata key (`general.alignment` changes the layout).
    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor; its data comes later, from the fill (or a hole).
    pub fn tensor(&mut self, name: &str, ty: GgmlType, dims: &[u64]) -> &mut Self {
        self.tensors.push((name.to_string(), ty, dims.to_vec()));
        self
    }

    /// Each tensor's type, in order (for fills that write real blocks).
    pub(crate) fn tensor_types(&self) -> Vec<GgmlType> {
        self.tensors.iter().map(|t| t.1).collect()
    }

    fn alignment(&self) -> u64 {
        let key = self.metadata.iter().find(|(k, _)| k == "general.alignment");
        key.and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    fn header(&self) -> std::io::Result<(Vec<u8>, WriterLayout)> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let alignment = self.alignment();
        if !alignment.is_power_of_two() {
            return Err(invalid(format!(
                "alignment {alignment} is not a power of two"
            )));
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key.as_bytes());
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let (mut offsets, mut sizes, mut cursor) = (Vec::new(), Vec::new(), 0u64);
        for (name, ty, dims) in &self.tensors {
            let bytes = tensor_bytes(*ty, dims)
                .ok_or_else(|| invalid(format!("tensor {name}: bad dims {dims:?}")))?;
            write_string(&mut out, name.as_bytes());
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&cursor.to_le_bytes());
            offsets.push(cursor);
            sizes.push(bytes);
            cursor = (cursor + bytes).next_multiple_of(alignment);
        }
        let data_offset = (out.len() as u64).next_multiple_of(alignment);
        let layout = WriterLayout {
            data_offset,
            offsets,
            sizes,
            file_size: data_offset + cursor,
        };
        Ok((out, layout))
    }

    /// Where the tensors would land, without writing.
    pub fn layout(&self) -> std::io::Result<WriterLayout> {
        self.header().map(|(_, layout)| layout)
    }

    /// Writes the file. With `fill`, tensor data is produced in chunks of at
    /// most 8 MiB; without, the data section is a hole (a sparse file).
    pub fn write(&self, path: &Path, fill: Option<Fill>) -> std::io::Result<WriterLayout> {
        let (header, layout) = self.header()?;
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        out.write_all(&header)?;
        if let Some(fill) = fill {
            let mut buffer = vec![0u8; 8 << 20];
            for (i, (&offset, &size)) in layout.offsets.iter().zip(&layout.sizes).enumerate() {
                out.seek(SeekFrom::Start(layout.data_offset + offset))?;
                let mut done = 0;
                while done < size {
                    let n = buffer.len().min((size - done) as usize);
                    fill(i, done, &mut buffer[..n]);
                    out.write_all(&buffer[..n])?;
                    done += n as u64;
                }
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.set_len(layout.file_size)?;
        Ok(layout)
    }
}

fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => write_string(out, s.as_bytes()),
        Value::Array(items) => {
            // An empty array's element type is immaterial; GGUF needs one, so U8.
            let element_type = items.first().map_or(0, Value::type_id);
            out.extend_from_slice(&element_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}
