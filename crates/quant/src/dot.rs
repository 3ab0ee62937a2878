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

use crate::half;
use shardload_gguf::GgmlType;

/// Elements per group: the Q8_0 block of x, and a divisor of every block size.
pub(crate) const GROUP: usize = 32;

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
            d: crate::f16_to_f32(f16::from_f32(d).to_bits()),
            half_sums,
        });
    }
    QuantizedInput { q, groups }
}

/// Whether `ty` has an integer row dot: every supported type but the float
/// ones, which take the exact f32 path.
pub(crate) fn has_integer_dot(ty: GgmlType) -> bool {
    crate::SUPPORTED.contains(&ty) && !ty.is_float()
}

/// The 16 non-linear levels of IQ4_NL and IQ4_XS.
pub(crate) const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Σ w·q over each 16-element half of a group, exactly.
#[inline(always)]
fn dot_halves(w: &[i8; GROUP], q: &[i8; GROUP]) -> (i32, i32) {
    #[cfg(target_arch = "x86_64")]
    if cfg!(target_feature = "avx2") || std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { dot_halves_avx2(w, q) };
    }
    let half = |h: usize| -> i32 {
        (16 * h..16 * h + 16)
            .map(|l| i32::from(w[l]) * i32::from(q[l]))
            .sum()
    };
    (half(0), half(1))
}

/// [`dot_halves`] with AVX2: sign-extend each half to i16, `vpmaddwd`, add lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_halves_avx2(w: &[i8; GROUP], q: &[i8; GROUP]) -> (i32, i32) {
    use std::arch::x86_64::*;
    // SAFETY: both arrays hold 32 bytes; unaligned loads.
    let (w, q) = unsafe {
        (
            _mm256_loadu_si256(w.as_ptr().cast()),
            _mm256_loadu_si256(q.as_ptr().cast()),
        )
    };
    let half = |wh: __m128i, qh: __m128i| {
        let products = _mm256_madd_epi16(_mm256_cvtepi8_epi16(wh), _mm256_cvtepi8_epi16(qh));
        let four = _mm_add_epi32(
            _mm256_castsi256_si128(products),
            _mm256_extracti128_si256::<1>(products),
        );
        let two = _mm_add_epi32(four, _mm_unpackhi_epi64(four, four));
        _mm_cvtsi128_si32(_mm_add_epi32(two, _mm_shuffle_epi32::<1>(two)))
    };
    (
        half(_mm256_castsi256_si128(w), _mm256_castsi256_si128(q)),
        half(
            _mm256_extracti128_si256::<1>(w),
            _mm256_extracti128_si256::<1>(q),
        ),
    )
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
/// blocks covering `x.q.len()` elements. Compiled twice: for the baseline
/// target and, chosen at run time, with AVX2, so the native baseline gets
/// the widest vectors this host has (no FMA: it would change the rounding).
pub(crate) fn row_dot(ty: GgmlType, row: &[u8], x: &QuantizedInput) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { row_dot_avx2(ty, row, x) };
    }
    row_dot_any(ty, row, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_dot_avx2(ty: GgmlType, row: &[u8], x: &QuantizedInput) -> f32 {
    row_dot_any(ty, row, x)
}

#[inline(always)]
fn row_dot_any(ty: GgmlType, row: &[u8], x: &QuantizedInput) -> f32 {
    // One loop per type (each closure is inlined into its own copy of the
    // loop), so the compiler vectorizes each type's unpacking on its own.
    let mut w = [0i8; GROUP];
    match ty {
        GgmlType::Q4_0 => for_each_group(ty, row, x, |b, _, x, acc| {
            nibbles(&b[2..18], &mut w);
            acc.add(half(b, 0), x.d, x.dot(&w) - 8 * x.sum());
        }),
        GgmlType::Q4_1 => for_each_group(ty, row, x, |b, _, x, acc| {
            nibbles(&b[4..20], &mut w);
            acc.add(half(b, 0), x.d, x.dot(&w));
            acc.add(half(b, 2), x.d, x.sum());
        }),
        GgmlType::Q5_0 => for_each_group(ty, row, x, |b, _, x, acc| {
            fifth_bits(&b[2..6], &b[6..22], &mut w);
            acc.add(half(b, 0), x.d, x.dot(&w) - 16 * x.sum());
        }),
        GgmlType::Q5_1 => for_each_group(ty, row, x, |b, _, x, acc| {
            fifth_bits(&b[4..8], &b[8..24], &mut w);
            acc.add(half(b, 0), x.d, x.dot(&w));
            acc.add(half(b, 2), x.d, x.sum());
        }),
        GgmlType::Q8_0 => for_each_group(ty, row, x, |b, _, x, acc| {
            for (w, &byte) in w.iter_mut().zip(&b[2..34]) {
                *w = byte as i8;
            }
            acc.add(half(b, 0), x.d, x.dot(&w));
        }),
        GgmlType::IQ4_NL => for_each_group(ty, row, x, |b, _, x, acc| {
            nibbles(&b[2..18], &mut w);
            acc.add(half(b, 0), x.d, x.dot(&w.map(|n| IQ4_LEVELS[n as usize])));
        }),
        GgmlType::IQ4_XS => for_each_group(ty, row, x, |b, g, x, acc| {
            let low = (b[4 + g / 2] >> (4 * (g % 2))) & 0xF;
            let high = ((u16::from_le_bytes([b[2], b[3]]) >> (2 * g)) & 3) as u8;
            let scale = i32::from(low | high << 4) - 32;
            nibbles(&b[8 + 16 * g..24 + 16 * g], &mut w);
            let isum = x.dot(&w.map(|n| IQ4_LEVELS[n as usize]));
            acc.add(half(b, 0) * scale as f32, x.d, isum);
        }),
        GgmlType::Q4_K => for_each_group(ty, row, x, |b, g, x, acc| {
            let qs = &b[16 + (g / 2) * 32..48 + (g / 2) * 32];
            for (w, &byte) in w.iter_mut().zip(qs) {
                *w = ((byte >> (4 * (g % 2))) & 0xF) as i8;
            }
            k_quant_scales(b, g, x, acc, &w);
        }),
        GgmlType::Q5_K => for_each_group(ty, row, x, |b, g, x, acc| {
            let qs = &b[48 + (g / 2) * 32..80 + (g / 2) * 32];
            for ((w, &byte), &high) in w.iter_mut().zip(qs).zip(&b[16..48]) {
                *w = (((byte >> (4 * (g % 2))) & 0xF) | (((high >> g) & 1) << 4)) as i8;
            }
            k_quant_scales(b, g, x, acc, &w);
        }),
        GgmlType::Q6_K => for_each_group(ty, row, x, |b, g, x, acc| {
            let (h, s) = (g / 4, g % 4);
            let low = &b[h * 64 + 32 * (s % 2)..h * 64 + 32 * (s % 2) + 32];
            for ((w, &low), &high) in w.iter_mut().zip(low).zip(&b[128 + h * 32..160 + h * 32]) {
                *w = (((low >> (4 * (s / 2))) & 0xF) | (((high >> (2 * s)) & 3) << 4)) as i8;
            }
            let (d0, d1) = x.dot_halves(&w);
            let (sa, sb) = (
                i32::from(b[192 + 2 * g] as i8),
                i32::from(b[193 + 2 * g] as i8),
            );
            let [s0, s1] = x.half_sums;
            acc.add(half(b, 208), x.d, sa * (d0 - 32 * s0) + sb * (d1 - 32 * s1));
        }),
        GgmlType::Q2_K => for_each_group(ty, row, x, |b, g, x, acc| {
            let (h, s) = (g / 4, g % 4);
            for (w, &byte) in w.iter_mut().zip(&b[16 + h * 32..48 + h * 32]) {
                *w = ((byte >> (2 * s)) & 3) as i8;
            }
            let (d0, d1) = x.dot_halves(&w);
            let (sa, sb) = (i32::from(b[2 * g]), i32::from(b[2 * g + 1]));
            let [s0, s1] = x.half_sums;
            acc.add(half(b, 80), x.d, (sa & 0xF) * d0 + (sb & 0xF) * d1);
            acc.add(-half(b, 82), x.d, (sa >> 4) * s0 + (sb >> 4) * s1);
        }),
        GgmlType::Q3_K => for_each_group(ty, row, x, |b, g, x, acc| {
            let (h, s) = (g / 4, g % 4);
            for ((w, &low), &high) in w.iter_mut().zip(&b[32 + h * 32..64 + h * 32]).zip(&b[..32]) {
                *w = (((low >> (2 * s)) & 3) | (((high >> g) & 1) << 2)) as i8;
            }
            let (d0, d1) = x.dot_halves(&w);
            let scale = |i: usize| {
                let low = (b[96 + i % 8] >> (4 * (i / 8))) & 0xF;
                let high = (b[104 + i % 4] >> (2 * (i / 4))) & 3;
                i32::from(low | high << 4) - 32
            };
            let [s0, s1] = x.half_sums;
            let isum = scale(2 * g) * (d0 - 4 * s0) + scale(2 * g + 1) * (d1 - 4 * s1);
            acc.add(half(b, 108), x.d, isum);
        }),
        other => unreachable!("{} has no integer dot", other.name()),
    }
}

/// Q4_K's and Q5_K's group sum: the 6-bit scale times the dot, minus the
/// 6-bit min times the x quant sum.
#[inline(always)]
fn k_quant_scales(b: &[u8], g: usize, x: &XGroup, acc: &mut Accumulator, w: &[i8; GROUP]) {
    let (sc, m) = crate::scale_min(&b[4..16], g);
    acc.add(half(b, 0) * f32::from(sc), x.d, x.dot(w));
    acc.add(-(half(b, 2) * f32::from(m)), x.d, x.sum());
}

/// Q5_0's and Q5_1's 5-bit quants: nibbles, with bit j of the 32-bit `qh`
/// as bit 4 of element j (spread a byte at a time through a table).
#[inline(always)]
fn fifth_bits(qh: &[u8], qs: &[u8], w: &mut [i8; GROUP]) {
    nibbles(qs, w);
    for (eight, &byte) in w.chunks_exact_mut(8).zip(qh) {
        for (w, high) in eight
            .iter_mut()
            .zip(SPREAD_BITS[byte as usize].to_le_bytes())
        {
            *w |= high as i8;
        }
    }
}

/// For each byte value, 8 bytes holding its bits 0..8 as 0x10 or 0.
const SPREAD_BITS: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut value = 0;
    while value < 256 {
        let mut bit = 0;
        while bit < 8 {
            if value >> bit & 1 == 1 {
                table[value] |= 0x10 << (8 * bit);
            }
            bit += 1;
        }
        value += 1;
    }
    table
};

/// One 32-element group of the quantized x.
struct XGroup<'a> {
    q: &'a [i8; GROUP],
    d: f32,
    half_sums: [i32; 2],
}

impl XGroup<'_> {
    #[inline(always)]
    fn dot_halves(&self, w: &[i8; GROUP]) -> (i32, i32) {
        dot_halves(w, self.q)
    }

    #[inline(always)]
    fn dot(&self, w: &[i8; GROUP]) -> i32 {
        let (lo, hi) = self.dot_halves(w);
        lo + hi
    }

    fn sum(&self) -> i32 {
        self.half_sums[0] + self.half_sums[1]
    }
}

/// Runs `group(block, g, x's group, accumulator)` over every group of a row
/// in order, and returns the accumulated sum.
#[inline(always)]
fn for_each_group(
    ty: GgmlType,
    row: &[u8],
    x: &QuantizedInput,
    mut group: impl FnMut(&[u8], usize, &XGroup, &mut Accumulator),
) -> f32 {
    let size = ty.type_size() as usize;
    let groups_per_block = ty.block_size() as usize / GROUP;
    let mut acc = Accumulator { sum: 0.0 };
    let mut groups = x.q.chunks_exact(GROUP).zip(&x.groups).map(|(q, g)| XGroup {
        q: q.try_into().expect("32 quants"),
        d: g.d,
        half_sums: g.half_sums,
    });
    for b in row.chunks_exact(size) {
        for g in 0..groups_per_block {
            let x = groups.next().expect("x covers the row");
            group(b, g, &x, &mut acc);
        }
    }
    acc.sum
}
