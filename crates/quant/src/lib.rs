//! Native dequantization of ggml's block formats, bit-exact with gguf-py's
//! numpy reference (same float operations in the same order, f32 throughout).
//!
//! It is the "same algorithm, native" baseline that guest kernels are
//! measured against, and a second oracle for them. It knows nothing of wasm.

use shardload_gguf::GgmlType;

/// The types this crate dequantizes: the one list shared with the guest's kernels.
pub use shardload_gguf::KERNEL_TYPES as SUPPORTED;

mod dot;

use dot::{IQ4_LEVELS, has_integer_dot, row_dot};
pub use dot::{InputGroup, QuantizedInput, quantize_input};

/// Why a dequantization was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DequantizeError {
    /// The type has no dequantizer here.
    Unsupported(GgmlType),
    /// `bytes` is not whole blocks, or `out` does not hold their elements.
    BadLength {
        /// Bytes given.
        bytes: usize,
        /// Elements the output holds.
        out: usize,
    },
}

impl std::fmt::Display for DequantizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DequantizeError::Unsupported(ty) => write!(f, "unsupported type {}", ty.name()),
            DequantizeError::BadLength { bytes, out } => {
                write!(f, "{bytes} bytes are not whole blocks of {out} elements")
            }
        }
    }
}

impl std::error::Error for DequantizeError {}

/// The little-endian f16 at `bytes[at..]`, as f32.
#[inline(always)]
pub(crate) fn half(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// f16 bits to f32 as numpy converts them (and so gguf-py): exactly, NaN
/// payloads kept as they are (hardware conversion would quiet a signaling
/// NaN). Normal values are rebiased in integers and subnormal ones scaled
/// from their mantissa, so no operation sees a subnormal f32.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let bits = u32::from(h & 0x7fff) << 13;
    let magnitude = match h & 0x7c00 {
        0x7c00 => bits | 0x7f80_0000,
        0 => (f32::from(h & 0x3ff) * f32::from_bits(0x3380_0000)).to_bits(),
        _ => bits + (112 << 23),
    };
    f32::from_bits(u32::from(h & 0x8000) << 16 | magnitude)
}

/// Dequantizes whole blocks of `ty` from `bytes` into `out` (one f32 per element).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantizeError> {
    if !SUPPORTED.contains(&ty) {
        return Err(DequantizeError::Unsupported(ty));
    }
    let (block, size) = (ty.block_size() as usize, ty.type_size() as usize);
    if !bytes.len().is_multiple_of(size) || bytes.len() / size * block != out.len() {
        return Err(DequantizeError::BadLength {
            bytes: bytes.len(),
            out: out.len(),
        });
    }
    for (b, y) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => y[0] = half(b, 0),
            GgmlType::BF16 => {
                y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
            }
            GgmlType::Q4_0 => q4_0(b, y),
            GgmlType::Q4_1 => q4_1(b, y),
            GgmlType::Q5_0 => q5(b, y, false),
            GgmlType::Q5_1 => q5(b, y, true),
            GgmlType::Q8_0 => {
                let d = half(b, 0);
                for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                    *y = f32::from(q as i8) * d;
                }
            }
            GgmlType::Q2_K => q2_k(b, y),
            GgmlType::Q3_K => q3_k(b, y),
            GgmlType::Q4_K => q45_k(b, y, false),
            GgmlType::Q5_K => q45_k(b, y, true),
            GgmlType::Q6_K => q6_k(b, y),
            GgmlType::IQ4_NL => {
                let d = half(b, 0);
                for (j, y) in y.iter_mut().enumerate() {
                    let nibble = (b[2 + j % 16] >> (4 * (j / 16))) & 0xF;
                    *y = d * f32::from(IQ4_LEVELS[nibble as usize]);
                }
            }
            GgmlType::IQ4_XS => iq4_xs(b, y),
            _ => unreachable!("SUPPORTED was checked"),
        }
    }
    Ok(())
}

/// Element j of a 32-element nibble block: low nibbles first, then high.
fn nibble(qs: &[u8], j: usize) -> u8 {
    (qs[j % 16] >> (4 * (j / 16))) & 0xF
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, y) in y.iter_mut().enumerate() {
        *y = d * f32::from(nibble(&b[2..], j) as i8 - 8);
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, y) in y.iter_mut().enumerate() {
        *y = d * f32::from(nibble(&b[4..], j)) + m;
    }
}

fn q5(b: &[u8], y: &mut [f32], with_min: bool) {
    let d = half(b, 0);
    let (m, at) = if with_min { (half(b, 2), 4) } else { (0.0, 2) };
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    for (j, y) in y.iter_mut().enumerate() {
        let q = nibble(&b[at + 4..], j) | (((qh >> j) & 1) as u8) << 4;
        *y = if with_min {
            d * f32::from(q) + m
        } else {
            d * f32::from(q as i8 - 16)
        };
    }
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    for (e, y) in y.iter_mut().enumerate() {
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        let q = (qs[h * 32 + l] >> (2 * s)) & 3;
        let scale = scales[e / 16];
        let dl = d * f32::from(scale & 0xF);
        let ml = dmin * f32::from(scale >> 4);
        *y = dl * f32::from(q) - ml;
    }
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d = half(b, 108);
    for (e, y) in y.iter_mut().enumerate() {
        let i = e / 16;
        let low = (scales[i % 8] >> (4 * (i / 8))) & 0xF;
        let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
        let dl = d * f32::from((low | high << 4) as i8 - 32);
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        let ql = (qs[h * 32 + l] >> (2 * s)) & 3;
        let qh = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
        *y = dl * f32::from(ql as i8 - (qh << 2) as i8);
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block.
pub(crate) fn scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 0x3F, scales[4 + j] & 0x3F)
    } else {
        let packed = scales[8 + j - 4];
        (
            (packed & 0xF) | ((scales[j - 4] >> 2) & 0x30),
            (packed >> 4) | ((scales[j] >> 2) & 0x30),
        )
    }
}

fn q45_k(b: &[u8], y: &mut [f32], five_bits: bool) {
    let (d, dmin, scales) = (half(b, 0), half(b, 2), &b[4..16]);
    let (qh, qs) = if five_bits {
        (&b[16..48], &b[48..176])
    } else {
        (&b[0..0], &b[16..144])
    };
    for (e, y) in y.iter_mut().enumerate() {
        let (g, l) = (e / 32, e % 32);
        let (sc, m) = scale_min(scales, g);
        let mut q = (qs[(g / 2) * 32 + l] >> (4 * (g % 2))) & 0xF;
        if five_bits {
            q |= ((qh[l] >> g) & 1) << 4;
        }
        *y = d * f32::from(sc) * f32::from(q) - dmin * f32::from(m);
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for (e, y) in y.iter_mut().enumerate() {
        let (h, k, l) = (e / 128, (e % 128) / 64, e % 64);
        let low = (ql[h * 64 + l] >> (4 * k)) & 0xF;
        let (s, l32) = ((e % 128) / 32, e % 32);
        let high = (qh[h * 32 + l32] >> (2 * s)) & 3;
        let dl = d * f32::from(scales[e / 16] as i8);
        *y = dl * f32::from((low | high << 4) as i8 - 32);
    }
}

fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (e, y) in y.iter_mut().enumerate() {
        let i = e / 32;
        let low = (scales_l[i / 2] >> (4 * (i % 2))) & 0xF;
        let high = ((scales_h >> (2 * i)) & 3) as u8;
        let dl = d * f32::from((low | high << 4) as i8 - 32);
        let (k, l) = ((e % 32) / 16, e % 16);
        let nibble = (qs[i * 16 + l] >> (4 * k)) & 0xF;
        *y = dl * f32::from(IQ4_LEVELS[nibble as usize]);
    }
}

/// `y[r] = Σ_j W[r][j] · x[j]` for whole rows of `ty` in `rows` (each row
/// `x.len()` elements): the native matvec the guest's is measured against;
/// for quantized types the same algorithm operation for operation, so the
/// two agree bit for bit.
///
/// Quantized types (all but F32, F16 and BF16) take the integer path of
/// llama.cpp (see `dot.rs`): `x` is quantized to Q8_0 once, each row is dotted with
/// it exactly in integers, 32 elements at a time, and a few f32 operations
/// per group scale the sums. Against `x̃`, gguf-py's Q8_0 round trip of `x`,
/// `|y[r] − Σ_j W[r][j] · x̃_j| ≤ (2G + 3) · 2⁻²⁴ · Σ_j (|s_j| + |m_j|) · |x̃_j|`
/// for G groups, where `W = s + m` splits each weight into its scaled quant
/// and its block's min term (`m = 0` for types without mins). Quantizing `x`
/// adds at most `Σ_j |W[r][j]| · 0.5625 · d_j` against the exact product,
/// `d_j = max|x|/127` over j's group (half a quant step, plus the f16
/// rounding of the scale).
///
/// Float types (F32, F16, BF16) are dequantized exactly and summed in f32
/// against `x` itself with four accumulators:
/// `|y[r] − Σ_j W[r][j] · x_j| ≤ n · 2⁻²⁴ · Σ_j |W[r][j] · x_j|` for rows of n elements.
pub fn matvec(ty: GgmlType, rows: &[u8], x: &[f32], y: &mut [f32]) -> Result<(), DequantizeError> {
    let row_bytes = (x.len() as u64 / ty.block_size() * ty.type_size()) as usize;
    let whole_rows = row_bytes > 0
        && (x.len() as u64).is_multiple_of(ty.block_size())
        && rows.len() == row_bytes * y.len();
    if !SUPPORTED.contains(&ty) {
        return Err(DequantizeError::Unsupported(ty));
    }
    if !whole_rows {
        return Err(DequantizeError::BadLength {
            bytes: rows.len(),
            out: x.len() * y.len(),
        });
    }
    if has_integer_dot(ty) {
        let input = quantize_input(x);
        for (row, y) in rows.chunks_exact(row_bytes).zip(y.iter_mut()) {
            *y = row_dot(ty, row, &input);
        }
        return Ok(());
    }
    let mut w = vec![0f32; x.len()];
    for (row, y) in rows.chunks_exact(row_bytes).zip(y.iter_mut()) {
        dequantize(ty, row, &mut w)?;
        let mut acc = [0f32; 4];
        let (w4, x4) = (w.chunks_exact(4), x.chunks_exact(4));
        let tail: f32 = w4
            .remainder()
            .iter()
            .zip(x4.remainder())
            .map(|(a, b)| a * b)
            .sum();
        for (a, b) in w4.zip(x4) {
            for k in 0..4 {
                acc[k] += a[k] * b[k];
            }
        }
        *y = (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail;
    }
    Ok(())
}
