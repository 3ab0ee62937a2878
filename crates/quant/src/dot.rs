//! The integer matvec: `x` quantized once to Q8_0 (exactly as ggml and
//! gguf-py quantize it), then every row of quantized weights dotted with it in
//! exact integer arithmetic, 32 elements (one *group*) at a time, with a few
//! f32 operations per group in a fixed order. This is the algorithm llama.cpp
//! runs for a decode step, and the guest's `matvec` runs it operation for
//! operation, so the two agree bit for bit.
//!
//! Per group g of a row, with `dx` the group's Q8_0 scale of x:
//! `sum = sum + (a_g · dx) · isum_g`, then, for types with a min term,
//! `sum = sum + (b_g · dx) · jsum_g`; `isum` and `jsum` are exact i32 sums
//! and `a`, `b` the group's weight scale and min in f32 (per type below).

use half::f16;
use shardload_gguf::GgmlType;

/// Elements per group: the Q8_0 block of x, and a divisor of every block size.
pub const GROUP: usize = 32;

/// `x` quantized to Q8_0 per 32-element group, with the quant sums that
/// kernels with offsets or mins need.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedInput {
    /// One quant per element.
    pub q: Vec<i8>,
    /// Per group: the f16 scale (as f32), and the sums of its quants over
    /// elements 0..16 and 16..32.
    pub groups: Vec<InputGroup>,
}

/// One group of a [`QuantizedInput`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputGroup {
    /// The Q8_0 scale, rounded to f16 as stored by ggml.
    pub d: f32,
    /// Sums of the quants of each 16-element half.
    pub half_sums: [i32; 2],
}

impl InputGroup {
    fn sum(&self) -> i32 {
        self.half_sums[0] + self.half_sums[1]
    }
}

/// Rounds half away from zero, as C's `roundf` and gguf-py's `np_roundf` do.
fn round_away(v: f32) -> f32 {
    let a = v.abs();
    let floored = a.floor();
    (floored + (2.0 * (a - floored)).floor()).copysign(v)
}

/// Quantizes `x` (a multiple of 32 elements) to Q8_0 as gguf-py does:
/// `d = max|x| / 127`, `q = roundf(x · (1 / d))`, `d` stored as f16.
pub fn quantize_input(x: &[f32]) -> QuantizedInput {
    assert!(x.len().is_multiple_of(GROUP), "x is not whole groups");
    let mut q = Vec::with_capacity(x.len());
    let mut groups = Vec::with_capacity(x.len() / GROUP);
    for group in x.chunks_exact(GROUP) {
        let amax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let mut half_sums = [0i32; 2];
        for (j, v) in group.iter().enumerate() {
            let quant = round_away(v * id) as i8;
            half_sums[j / 16] += i32::from(quant);
            q.push(quant);
        }
        groups.push(InputGroup {
            d: f16::from_f32(d).to_f32(),
            half_sums,
        });
    }
    QuantizedInput { q, groups }
}

/// The types with an integer row dot; float types take the exact f32 path.
pub const INTEGER_TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// The 16 non-linear levels of IQ4_NL and IQ4_XS.
pub(crate) const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn half(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Σ w·q over 16 elements, exactly.
#[inline(always)]
fn dot16(w: &[i8], q: &[i8]) -> i32 {
    w[..16]
        .iter()
        .zip(&q[..16])
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// One group's f32 accumulation, in the order both implementations use.
struct Accumulator {
    sum: f32,
}

impl Accumulator {
    #[inline(always)]
    fn add(&mut self, a: f32, dx: f32, isum: i32) {
        self.sum += (a * dx) * isum as f32;
    }
}

/// Low nibbles of 16 bytes, then high nibbles: a 32-element nibble block.
#[inline(always)]
fn nibbles(qs: &[u8], w: &mut [i8; GROUP]) {
    for l in 0..16 {
        w[l] = (qs[l] & 0xF) as i8;
        w[l + 16] = (qs[l] >> 4) as i8;
    }
}

/// The dot of one row of `ty` with the quantized input; `row` holds whole
/// blocks covering `x.q.len()` elements.
pub fn row_dot(ty: GgmlType, row: &[u8], x: &QuantizedInput) -> f32 {
    let size = ty.type_size() as usize;
    let groups_per_block = ty.block_size() as usize / GROUP;
    let mut acc = Accumulator { sum: 0.0 };
    let mut w = [0i8; GROUP];
    for (k, b) in row.chunks_exact(size).enumerate() {
        for g in 0..groups_per_block {
            let index = k * groups_per_block + g;
            let xg = &x.groups[index];
            let q = &x.q[index * GROUP..(index + 1) * GROUP];
            let (dx, [s0, s1]) = (xg.d, xg.half_sums);
            let dot = |w: &[i8; GROUP]| (dot16(&w[..16], &q[..16]), dot16(&w[16..], &q[16..]));
            match ty {
                GgmlType::Q4_0 | GgmlType::Q4_1 => {
                    let at = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                    nibbles(&b[at..at + 16], &mut w);
                    let (d0, d1) = dot(&w);
                    if ty == GgmlType::Q4_0 {
                        acc.add(half(b, 0), dx, d0 + d1 - 8 * xg.sum());
                    } else {
                        acc.add(half(b, 0), dx, d0 + d1);
                        acc.add(half(b, 2), dx, xg.sum());
                    }
                }
                GgmlType::Q5_0 | GgmlType::Q5_1 => {
                    let at = if ty == GgmlType::Q5_0 { 2 } else { 4 };
                    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                    nibbles(&b[at + 4..at + 20], &mut w);
                    for (j, w) in w.iter_mut().enumerate() {
                        *w |= (((qh >> j) & 1) << 4) as i8;
                    }
                    let (d0, d1) = dot(&w);
                    if ty == GgmlType::Q5_0 {
                        acc.add(half(b, 0), dx, d0 + d1 - 16 * xg.sum());
                    } else {
                        acc.add(half(b, 0), dx, d0 + d1);
                        acc.add(half(b, 2), dx, xg.sum());
                    }
                }
                GgmlType::Q8_0 => {
                    for (w, &byte) in w.iter_mut().zip(&b[2..34]) {
                        *w = byte as i8;
                    }
                    let (d0, d1) = dot(&w);
                    acc.add(half(b, 0), dx, d0 + d1);
                }
                GgmlType::IQ4_NL => {
                    nibbles(&b[2..18], &mut w);
                    w = w.map(|n| IQ4_LEVELS[n as usize]);
                    let (d0, d1) = dot(&w);
                    acc.add(half(b, 0), dx, d0 + d1);
                }
                GgmlType::IQ4_XS => {
                    let low = (b[4 + g / 2] >> (4 * (g % 2))) & 0xF;
                    let high = ((u16::from_le_bytes([b[2], b[3]]) >> (2 * g)) & 3) as u8;
                    let scale = i32::from(low | high << 4) - 32;
                    nibbles(&b[8 + 16 * g..24 + 16 * g], &mut w);
                    w = w.map(|n| IQ4_LEVELS[n as usize]);
                    let (d0, d1) = dot(&w);
                    acc.add(half(b, 0) * scale as f32, dx, d0 + d1);
                }
                GgmlType::Q4_K | GgmlType::Q5_K => {
                    let (sc, m) = crate::scale_min(&b[4..16], g);
                    let qs = if ty == GgmlType::Q4_K { 16 } else { 48 };
                    for (l, w) in w.iter_mut().enumerate() {
                        *w = ((b[qs + (g / 2) * 32 + l] >> (4 * (g % 2))) & 0xF) as i8;
                        if ty == GgmlType::Q5_K {
                            *w |= (((b[16 + l] >> g) & 1) << 4) as i8;
                        }
                    }
                    let (d0, d1) = dot(&w);
                    acc.add(half(b, 0) * f32::from(sc), dx, d0 + d1);
                    acc.add(-(half(b, 2) * f32::from(m)), dx, xg.sum());
                }
                GgmlType::Q6_K => {
                    let (h, s) = (g / 4, g % 4);
                    for (l, w) in w.iter_mut().enumerate() {
                        let low = (b[h * 64 + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0xF;
                        let high = (b[128 + h * 32 + l] >> (2 * s)) & 3;
                        *w = (low | high << 4) as i8;
                    }
                    let (d0, d1) = dot(&w);
                    let (sa, sb) = (i32::from(b[192 + 2 * g] as i8), i32::from(b[193 + 2 * g] as i8));
                    acc.add(half(b, 208), dx, sa * (d0 - 32 * s0) + sb * (d1 - 32 * s1));
                }
                GgmlType::Q2_K => {
                    let (h, s) = (g / 4, g % 4);
                    for (l, w) in w.iter_mut().enumerate() {
                        *w = ((b[16 + h * 32 + l] >> (2 * s)) & 3) as i8;
                    }
                    let (d0, d1) = dot(&w);
                    let (sa, sb) = (i32::from(b[2 * g]), i32::from(b[2 * g + 1]));
                    acc.add(half(b, 80), dx, (sa & 0xF) * d0 + (sb & 0xF) * d1);
                    acc.add(-half(b, 82), dx, (sa >> 4) * s0 + (sb >> 4) * s1);
                }
                GgmlType::Q3_K => {
                    let (h, s) = (g / 4, g % 4);
                    for (l, w) in w.iter_mut().enumerate() {
                        let low = (b[32 + h * 32 + l] >> (2 * s)) & 3;
                        let high = (b[l] >> g) & 1;
                        *w = (low | high << 2) as i8;
                    }
                    let (d0, d1) = dot(&w);
                    let scale = |i: usize| {
                        let low = (b[96 + i % 8] >> (4 * (i / 8))) & 0xF;
                        let high = (b[104 + i % 4] >> (2 * (i / 4))) & 3;
                        i32::from(low | high << 4) - 32
                    };
                    let isum = scale(2 * g) * (d0 - 4 * s0) + scale(2 * g + 1) * (d1 - 4 * s1);
                    acc.add(half(b, 108), dx, isum);
                }
                other => unreachable!("{} has no integer dot", other.name()),
            }
        }
    }
    acc.sum
}
