//! The guest's `matvec`: llama.cpp's integer algorithm, operation for
//! operation what `shardload_quant::matvec` does natively (so the two agree
//! bit for bit). `x` is quantized to Q8_0 once per call; each row is dotted
//! with it 32 elements (a *group*) at a time in exact i32 arithmetic with
//! SIMD128, and per group `sum = sum + (a · dx) · isum` (then
//! `+ (b · dx) · jsum` for types with a min). Float types (F32, F16, BF16)
//! are dequantized exactly and dotted in f32 with x itself.
//!
//! Weight quants are unpacked into i8x16 vectors. The 16-lane dot is relaxed
//! SIMD's `i32x4.relaxed_dot_i8x16_i7x16_add_s` (one `pmaddubsw` + `pmaddwd`
//! on x86 under wasmtime, one `vpdpbusd` in V8 on AVX-VNNI), which is exact
//! and deterministic when its second operand is in 0..=127: the quants
//! themselves where a type's are, else `|w|` against x with w's signs
//! (Q8_0, IQ4). Without relaxed SIMD it is `i32x4.dot_i16x8_s` over
//! sign-extended halves. All give the same integers, so the same y.
//!
//! The kernels' shapes: one input is dotted with four rows per pass (the x
//! loads shared, the four dot vectors summed across lanes together, one row
//! per f32 lane); a batch, four inputs per pass over one unpacked row (one
//! input per lane). Each lane does the scalar algorithm's f32 operations in
//! its order, so every shape gives the same bits.

use std::fmt::Write;

use shardload_gguf::GgmlType;

use crate::abi;
use crate::quants::{self, Min, Quants, Scale};

/// How 16-lane integer dot products are emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotProduct {
    /// Relaxed SIMD's i8 × i7 dot, for types whose quants fit in 7 bits.
    Relaxed,
    /// Plain SIMD128 only: `i32x4.dot_i16x8_s` over extended halves.
    Plain,
}

/// Rows a batched `matmul` reads from the shard before moving on to the next
/// block: 16 rows of a 4096-wide Q4 tensor are 36 KiB, about L1's size.
const ROW_CHUNK: u32 = 16;

/// The per-group metadata `$quantize_x` writes for each 32 elements of x:
/// f16-rounded scale (f32), quant sums of elements 0..16 and 16..32, their sum.
const META_BYTES: u32 = 16;

/// The i32x4 sum of `w · x` over 16 lanes: `w` an i8x16 local (its quants
/// of range `quants`), `x` an i8x16 of input quants. With relaxed SIMD, one
/// `relaxed_dot` (whose second operand must be 0..=127): of `w` itself, or
/// of `|w|` against x with w's signs; else `i32x4.dot_i16x8_s` over
/// sign-extended halves.
fn dot16(w: &str, x: &str, quants: Quants, dot: DotProduct) -> String {
    if dot == DotProduct::Relaxed {
        let zero = "(v128.const i64x2 0 0)";
        return match quants {
            Quants::Unsigned { .. } => {
                format!("(i32x4.relaxed_dot_i8x16_i7x16_add_s {x} {w} {zero})")
            }
            // (x ^ m) - m with m = (w < 0): x negated where w is negative.
            Quants::Signed => format!(
                "(i32x4.relaxed_dot_i8x16_i7x16_add_s
                   (i8x16.sub (v128.xor {x} (local.tee $t (i8x16.lt_s {w} {zero}))) (local.get $t))
                   (i8x16.abs {w}) {zero})"
            ),
        };
    }
    format!(
        "(i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.tee $t {w})) (i16x8.extend_low_i8x16_s (local.tee $u {x})))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $t)) (i16x8.extend_high_i8x16_s (local.get $u))))"
    )
}

/// The largest unsigned quant whose pair products, two halves' worth, stay
/// inside i16: 4 · 64 · 127 < 32768.
const I16_PAIRED_MAX: u8 = 64;

/// An i32x4 whose lanes sum to the group's integer dot with the input
/// quants `xa` (elements 0..16) and `xb` (16..32): the two halves' dots
/// added, or for a scale per half each times its integer scale (`$sa`,
/// `$sb`). Small unsigned quants with relaxed SIMD accumulate in i16: one
/// `pmaddubsw` per half, one `paddw`, one widening `pmaddwd` (the same
/// integers, no pair sum near i16's limits).
fn group_dots(gr: &quants::Group, xa: &str, xb: &str, dot: DotProduct) -> String {
    let (wl, wh) = ("(local.get $wl)", "(local.get $wh)");
    match &gr.scale {
        Scale::Whole(_) => match gr.quants {
            Quants::Unsigned { max } if max <= I16_PAIRED_MAX && dot == DotProduct::Relaxed => {
                format!(
                    "(i32x4.extadd_pairwise_i16x8_s (i16x8.add (i16x8.relaxed_dot_i8x16_i7x16_s {xa} {wl}) (i16x8.relaxed_dot_i8x16_i7x16_s {xb} {wh})))"
                )
            }
            _ => format!(
                "(i32x4.add {} {})",
                dot16(wl, xa, gr.quants, dot),
                dot16(wh, xb, gr.quants, dot)
            ),
        },
        Scale::Halves { .. } => format!(
            "(i32x4.add (i32x4.mul {} (i32x4.splat (local.get $sa))) (i32x4.mul {} (i32x4.splat (local.get $sb))))",
            dot16(wl, xa, gr.quants, dot),
            dot16(wh, xb, gr.quants, dot)
        ),
    }
}

/// Input k's quants of group `g`, elements 0..16 (`half` 0) or 16..32.
fn x_quants(g: u32, k: u32, half: u32) -> String {
    format!(
        "(v128.load $m0 offset={} (local.get $q{k}))",
        32 * g + 16 * half
    )
}

/// The sum of an i32x4's lanes.
/// Two shuffle-and-add steps (`pshufd` + `paddd` each on x86), then lane 0.
fn lanes_sum(v: &str) -> String {
    let swap_halves = "8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7";
    let swap_pairs = "4 5 6 7 0 1 2 3 12 13 14 15 8 9 10 11";
    format!(
        "(i32x4.extract_lane 0 (i32x4.add
          (local.tee $s (i32x4.add (local.tee $s {v}) (i8x16.shuffle {swap_halves} (local.get $s) (local.get $s))))
          (i8x16.shuffle {swap_pairs} (local.get $s) (local.get $s))))"
    )
}

/// Group `g`'s x quant sum of input k over all 32 elements (`half` None) or one half.
fn x_sum(g: u32, k: u32, half: Option<u32>) -> String {
    let field = half.map_or(12, |h| 4 + 4 * h);
    format!(
        "(i32.load $m0 offset={} (local.get $g{k}))",
        META_BYTES * g + field
    )
}

/// The statements for group `g` of one row against one input, the scalar
/// algorithm every kernel shape reproduces: the weights unpacked (into
/// `$wl`, `$wh`, and the half scales into `$sa`, `$sb`), dotted with the
/// input (x quants at `$q0 + 32 g`, meta at `$g0 + 16 g`), the sum in `$sum0`.
fn group_code(ty: &str, m: u32, g: u32, dot: DotProduct) -> String {
    let gr = quants::group(ty, m, g);
    let offset = gr.offset;
    let mut code = format!(
        "\n        {setup}\n        (local.set $wl {lo}) (local.set $wh {hi})",
        setup = gr.setup,
        lo = gr.lo,
        hi = gr.hi
    );
    if let Scale::Halves { sa, sb, .. } = &gr.scale {
        let _ = write!(code, " (local.set $sa {sa}) (local.set $sb {sb})");
    }
    let k = 0;
    let dx = format!("(f32.load $m0 offset={} (local.get $g{k}))", META_BYTES * g);
    let dots = lanes_sum(&group_dots(
        &gr,
        &x_quants(g, k, 0),
        &x_quants(g, k, 1),
        dot,
    ));
    let (a, isum) = match &gr.scale {
        Scale::Whole(a) => {
            let isum = if offset == 0 {
                dots
            } else {
                format!(
                    "(i32.sub {dots} (i32.mul (i32.const {offset}) {}))",
                    x_sum(g, k, None)
                )
            };
            (a, isum)
        }
        Scale::Halves { a, .. } => {
            let isum = if offset == 0 {
                dots
            } else {
                format!(
                    "(i32.sub {dots} (i32.mul (i32.const {offset}) (i32.add
                   (i32.mul (local.get $sa) {}) (i32.mul (local.get $sb) {}))))",
                    x_sum(g, k, Some(0)),
                    x_sum(g, k, Some(1))
                )
            };
            (a, isum)
        }
    };
    let _ = write!(
        code,
        "\n        (local.set $sum{k} (f32.add (local.get $sum{k}) (f32.mul (f32.mul {a} {dx}) (f32.convert_i32_s {isum}))))"
    );
    let min = gr.min.as_ref().map(|min| match min {
        Min::Whole(b) => (b.clone(), x_sum(g, k, None)),
        Min::Halves { b, ma, mb } => (
            b.clone(),
            format!(
                "(i32.add (i32.mul {ma} {}) (i32.mul {mb} {}))",
                x_sum(g, k, Some(0)),
                x_sum(g, k, Some(1))
            ),
        ),
    });
    if let Some((b, jsum)) = min {
        let _ = write!(
            code,
            "\n        (local.set $sum{k} (f32.add (local.get $sum{k}) (f32.mul (f32.mul {b} {dx}) (f32.convert_i32_s {jsum}))))"
        );
    }

    code
}
/// Rows the single-input kernel (`$mvr_...`) dots with one input at once:
/// each x load and its metadata serve four rows, the four rows' i32 dot
/// vectors are summed across lanes together (one transpose, not four
/// horizontal sums), and the float update runs with one row per lane.
const ROWS_AT_ONCE: u32 = 4;

/// The locals a block's unpacking and a group's dots use for one row: in
/// the row-blocked kernel each row has its own (`$w1` of row 2 is `$w1_r2`).
const ROW_LOCALS: &[&str] = &[
    "p", "d", "dmin", "half", "bits", "sa", "sb", "w1", "w2", "w3", "w4", "h1", "h2", "qh", "wl",
    "wh", "t", "u", "s",
];

/// `code` with the per-row locals ([`ROW_LOCALS`]) renamed for row `r`.
fn for_row(code: &str, r: u32) -> String {
    let mut out = String::with_capacity(code.len() + code.len() / 8);
    let mut rest = code;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        out.push_str(name);
        if ROW_LOCALS.contains(&name) {
            let _ = write!(out, "_r{r}");
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Statements that leave in `$v0` the lane sums of the i32x4 locals
/// `$v0..$v3` (lane i: the sum of `$vi`'s lanes): 64-bit halves paired, then
/// lanes; six shuffles and three adds for four sums, where four horizontal
/// sums take eight and eight.
const TRANSPOSED_SUMS: &str = "
        (local.set $v0 (i32x4.add (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $v0) (local.get $v1))
                                   (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $v0) (local.get $v1))))
        (local.set $v2 (i32x4.add (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $v2) (local.get $v3))
                                   (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $v2) (local.get $v3))))
        (local.set $v0 (i32x4.add (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $v0) (local.get $v2))
                                   (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $v0) (local.get $v2))))";

/// An f32x4 (or i32x4, `shape`) with lane r the value of `lane(r)`.
fn lanes(shape: &str, lane: impl Fn(u32) -> String) -> String {
    (1..ROWS_AT_ONCE).fold(format!("({shape}.splat {})", lane(0)), |v, r| {
        format!("({shape}.replace_lane {r} {v} {})", lane(r))
    })
}

/// The statements for group `g` of four rows against one input (x quants at
/// `$q0 + 32 g`, meta at `$g0 + 16 g`): each row's weights unpacked as in
/// [`group_code`], their dots, and `$acc` (lane r: row r's sum) updated with
/// exactly the scalar kernel's f32 operations, lane by lane, so the sums are
/// bit-identical to it.
fn row_block_group_code(ty: &str, m: u32, g: u32, dot: DotProduct) -> String {
    let gr = quants::group(ty, m, g);
    let mut code = String::new();
    for r in 0..ROWS_AT_ONCE {
        let mut unpack = format!(
            "\n        {} (local.set $wl {}) (local.set $wh {})",
            gr.setup, gr.lo, gr.hi
        );
        if let Scale::Halves { sa, sb, .. } = &gr.scale {
            let _ = write!(unpack, " (local.set $sa {sa}) (local.set $sb {sb})");
        }
        code += &for_row(&unpack, r);
    }
    // The input's quants, loaded once for the four rows.
    let _ = write!(
        code,
        "\n        (local.set $xa {}) (local.set $xb {})",
        x_quants(g, 0, 0),
        x_quants(g, 0, 1)
    );
    for r in 0..ROWS_AT_ONCE {
        let dots = group_dots(&gr, "(local.get $xa)", "(local.get $xb)", dot);
        let _ = write!(code, "\n        (local.set $v{r} {})", for_row(&dots, r));
    }
    code += TRANSPOSED_SUMS;
    let offset = gr.offset;
    let isum = match &gr.scale {
        _ if offset == 0 => "(local.get $v0)".to_string(),
        Scale::Whole(_) => format!(
            "(i32x4.sub (local.get $v0) (i32x4.splat (i32.mul (i32.const {offset}) {})))",
            x_sum(g, 0, None)
        ),
        Scale::Halves { .. } => format!(
            "(i32x4.sub (local.get $v0) (i32x4.mul (i32x4.splat (i32.const {offset})) (i32x4.add
               (i32x4.mul {} (i32x4.splat {})) (i32x4.mul {} (i32x4.splat {})))))",
            lanes("i32x4", |r| for_row("(local.get $sa)", r)),
            x_sum(g, 0, Some(0)),
            lanes("i32x4", |r| for_row("(local.get $sb)", r)),
            x_sum(g, 0, Some(1))
        ),
    };
    let a = match &gr.scale {
        Scale::Whole(a) | Scale::Halves { a, .. } => a,
    };
    let dx = format!(
        "(f32x4.splat (f32.load $m0 offset={} (local.get $g0)))",
        META_BYTES * g
    );
    // Each row's scale: the block's d itself (already one row per lane), or built lane by lane.
    let per_row = |value: &str| match value {
        quants::D => "(local.get $dv)".to_string(),
        quants::DMIN => "(local.get $dminv)".to_string(),
        _ => lanes("f32x4", |r| for_row(value, r)),
    };
    let _ = write!(
        code,
        "\n        (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (f32x4.mul {} {dx}) (f32x4.convert_i32x4_s {isum}))))",
        per_row(a)
    );
    let min = gr.min.as_ref().map(|min| match min {
        Min::Whole(b) => (b, format!("(i32x4.splat {})", x_sum(g, 0, None))),
        Min::Halves { b, ma, mb } => (
            b,
            format!(
                "(i32x4.add (i32x4.mul {} (i32x4.splat {})) (i32x4.mul {} (i32x4.splat {})))",
                lanes("i32x4", |r| for_row(ma, r)),
                x_sum(g, 0, Some(0)),
                lanes("i32x4", |r| for_row(mb, r)),
                x_sum(g, 0, Some(1))
            ),
        ),
    });
    if let Some((b, jsum)) = min {
        let _ = write!(
            code,
            "\n        (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (f32x4.mul {} {dx}) (f32x4.convert_i32x4_s {jsum}))))",
            per_row(b)
        );
    }
    code
}

/// The statements for group `g` of one row against [`INPUTS_AT_ONCE`]
/// inputs: the weights unpacked once, dotted with each input (x quants at
/// `$q{k} + 32 g`, meta at `$g{k} + 16 g`), the four dot vectors summed
/// across lanes together, and `$acc` (lane k: input k's sum) updated with the
/// scalar kernel's f32 operations lane by lane, so the sums are bit-identical.
fn inputs_block_group_code(ty: &str, m: u32, g: u32, dot: DotProduct) -> String {
    let gr = quants::group(ty, m, g);
    let mut code = format!(
        "\n        {} (local.set $wl {}) (local.set $wh {})",
        gr.setup, gr.lo, gr.hi
    );
    if let Scale::Halves { sa, sb, .. } = &gr.scale {
        let _ = write!(code, " (local.set $sa {sa}) (local.set $sb {sb})");
    }
    for k in 0..INPUTS_AT_ONCE {
        let dots = group_dots(&gr, &x_quants(g, k, 0), &x_quants(g, k, 1), dot);
        let _ = write!(code, "\n        (local.set $v{k} {dots})");
    }
    code += TRANSPOSED_SUMS;
    let x_sums = |half| lanes("i32x4", |k| x_sum(g, k, half));
    let offset = gr.offset;
    let isum = match &gr.scale {
        _ if offset == 0 => "(local.get $v0)".to_string(),
        Scale::Whole(_) => format!(
            "(i32x4.sub (local.get $v0) (i32x4.mul (i32x4.splat (i32.const {offset})) {}))",
            x_sums(None)
        ),
        Scale::Halves { .. } => format!(
            "(i32x4.sub (local.get $v0) (i32x4.mul (i32x4.splat (i32.const {offset})) (i32x4.add
               (i32x4.mul (i32x4.splat (local.get $sa)) {}) (i32x4.mul (i32x4.splat (local.get $sb)) {}))))",
            x_sums(Some(0)),
            x_sums(Some(1))
        ),
    };
    let a = match &gr.scale {
        Scale::Whole(a) | Scale::Halves { a, .. } => a,
    };
    let dx = lanes("f32x4", |k| {
        format!("(f32.load $m0 offset={} (local.get $g{k}))", META_BYTES * g)
    });
    let _ = write!(
        code,
        "\n        (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (f32x4.mul (f32x4.splat {a}) {dx}) (f32x4.convert_i32x4_s {isum}))))"
    );
    let min = gr.min.as_ref().map(|min| match min {
        Min::Whole(b) => (b, x_sums(None)),
        Min::Halves { b, ma, mb } => (
            b,
            format!(
                "(i32x4.add (i32x4.mul (i32x4.splat {ma}) {}) (i32x4.mul (i32x4.splat {mb}) {}))",
                x_sums(Some(0)),
                x_sums(Some(1))
            ),
        ),
    });
    if let Some((b, jsum)) = min {
        let _ = write!(
            code,
            "\n        (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (f32x4.mul (f32x4.splat {b}) {dx}) (f32x4.convert_i32x4_s {jsum}))))"
        );
    }
    code
}

/// Types whose row-blocked kernel is slower than the one-row kernel: Q6_K
/// keeps six vectors of a block live per row (low and high bits of two
/// group pairs), 24 for four rows, past the 16 xmm registers Cranelift uses
/// (measured: 4.12 GB/s against 4.78 for one row at a time on
/// Qwen2.5-Coder's Q6_K weights, 1 thread).
const ONE_ROW_AT_A_TIME: &[&str] = &["Q6_K"];

/// `$mvr_{ty}_{shard}`: `$mv_{ty}_{shard}`'s rows and signature (one input),
/// four rows at a time while four are left, the rest by `$mv_` (all of them
/// for [`ONE_ROW_AT_A_TIME`] types).
fn row_block_loop(ty: &str, block: u64, size: u64, shard: u32, dot: DotProduct) -> String {
    let tail = format!(
        "(call $mv_{ty}_{shard} (local.get $p) (local.get $rows) (local.get $row_bytes) (local.get $blocks) (local.get $q_start)
      (local.get $g_start) (local.get $y) (local.get $q_stride) (local.get $g_stride) (local.get $y_stride))"
    );
    let signature = format!(
        "(func $mvr_{ty}_{shard} (param $p i64) (param $rows i64) (param $row_bytes i64) (param $blocks i32) (param $q_start i32) (param $g_start i32) (param $y i32) (param $q_stride i32) (param $g_stride i32) (param $y_stride i32)"
    );
    if ONE_ROW_AT_A_TIME.contains(&ty) {
        return format!("\n  {signature}\n    {tail})");
    }
    let m = shard + 1;
    let groups = (block / 32) as u32;
    let rows = |f: &dyn Fn(u32) -> String| (0..ROWS_AT_ONCE).map(f).collect::<Vec<_>>().join(" ");
    // The four rows' f16 scales converted together, then one lane per row;
    // a dmin right after d comes in the same 32-bit load.
    let (d_at, dmin_at) = quants::scale_offsets(ty);
    let gather = |load: &str, at: u32| {
        lanes("i32x4", |r| {
            format!("({load} $m{m} offset={at} (local.get $p_r{r}))")
        })
    };
    let mut scales = if dmin_at == Some(d_at + 2) {
        format!(
            "\n        (local.set $hp {})
        (local.set $hv (v128.and (local.get $hp) (i32x4.splat (i32.const 0xffff)))) (local.set $dv {})
        (local.set $hv (i32x4.shr_u (local.get $hp) (i32.const 16))) (local.set $dminv {})",
            gather("i32.load", d_at),
            quants::f16x4("$hv"),
            quants::f16x4("$hv")
        )
    } else {
        let mut code = format!(
            "\n        (local.set $hv {}) (local.set $dv {})",
            gather("i32.load16_u", d_at),
            quants::f16x4("$hv")
        );
        if let Some(at) = dmin_at {
            let _ = write!(
                code,
                "\n        (local.set $hv {}) (local.set $dminv {})",
                gather("i32.load16_u", at),
                quants::f16x4("$hv")
            );
        }
        code
    };
    for (field, vector) in [("d", "$dv"), ("dmin", "$dminv")] {
        if field == "dmin" && dmin_at.is_none() {
            continue;
        }
        for r in 0..ROWS_AT_ONCE {
            let _ = write!(
                scales,
                " (local.set ${field}_r{r} (f32x4.extract_lane {r} (local.get {vector})))"
            );
        }
    }
    let body: String = scales
        + &(0..groups)
            .map(|g| row_block_group_code(ty, m, g, dot))
            .collect::<String>();
    let locals = rows(&|r| {
        for_row(
            "(local $p i64) (local $d f32) (local $dmin f32) (local $half i32) (local $bits i32) (local $sa i32) (local $sb i32)
    (local $w1 v128) (local $w2 v128) (local $w3 v128) (local $w4 v128) (local $h1 v128) (local $h2 v128) (local $qh v128)
    (local $t v128) (local $u v128) (local $s v128) (local $wl v128) (local $wh v128)",
            r,
        )
    });
    format!(
        r#"
  {signature}
    (local $b i32) (local $q0 i32) (local $g0 i32) (local $acc v128) (local $v0 v128) (local $v1 v128) (local $v2 v128) (local $v3 v128)
    (local $hv v128) (local $hp v128) (local $dv v128) (local $dminv v128) (local $xa v128) (local $xb v128)
    {locals}
    (block $done
      (loop $each_rows
        (br_if $done (i64.lt_u (local.get $rows) (i64.const {ROWS_AT_ONCE})))
        {starts}
        (local.set $acc (v128.const i64x2 0 0))
        (local.set $q0 (local.get $q_start)) (local.set $g0 (local.get $g_start))
        (local.set $b (local.get $blocks))
        (block $no_blocks
          (br_if $no_blocks (i32.eqz (local.get $b)))
          (loop $each_block{body}
            {advance}
            (local.set $q0 (i32.add (local.get $q0) (i32.const {q_step}))) (local.set $g0 (i32.add (local.get $g0) (i32.const {g_step})))
            (br_if $each_block (local.tee $b (i32.sub (local.get $b) (i32.const 1))))))
        (v128.store $m0 (local.get $y) (local.get $acc))
        (local.set $y (i32.add (local.get $y) (i32.const {y_step})))
        (local.set $p (i64.add (local.get $p) (i64.mul (local.get $row_bytes) (i64.const {ROWS_AT_ONCE}))))
        (local.set $rows (i64.sub (local.get $rows) (i64.const {ROWS_AT_ONCE})))
        (br $each_rows)))
    {tail})"#,
        starts = rows(&|r| format!(
            "(local.set $p_r{r} (i64.add (local.get $p) (i64.mul (local.get $row_bytes) (i64.const {r}))))"
        )),
        advance = rows(&|r| format!(
            "(local.set $p_r{r} (i64.add (local.get $p_r{r}) (i64.const {size})))"
        )),
        q_step = 32 * groups,
        g_step = META_BYTES * groups,
        y_step = 4 * ROWS_AT_ONCE,
    )
}

/// How many inputs a batched `matmul` dots with each unpacked block at once
/// (`$mvN_...`); single inputs and the rest of a batch use `$mv_...`.
const INPUTS_AT_ONCE: u32 = 4;

/// `$mv{N}_{ty}_{shard}` (N = `inputs`, empty for 1): `rows` rows of `ty`
/// from `$p` (each `row_bytes`, `blocks` blocks) dotted with `inputs`
/// quantized inputs, input k's quants at `$q0 + k q_stride` and metadata at
/// `$g0 + k g_stride`, its f32 results at `$y + k y_stride` (bytes).
fn row_loop(ty: &str, block: u64, size: u64, shard: u32, dot: DotProduct, inputs: u32) -> String {
    let m = shard + 1;
    let groups = (block / 32) as u32;
    let blocked = inputs == INPUTS_AT_ONCE;
    let body: String = quants::block_scales(ty, m)
        + &(0..groups)
            .map(|g| {
                if blocked {
                    inputs_block_group_code(ty, m, g, dot)
                } else {
                    group_code(ty, m, g, dot)
                }
            })
            .collect::<String>();
    let each = |f: &dyn Fn(u32) -> String| (0..inputs).map(f).collect::<Vec<_>>().join(" ");
    // One input: a scalar sum; four: lane k of `$acc` is input k's.
    let (zero, store) = if blocked {
        (
            "(local.set $acc (v128.const i64x2 0 0))".to_string(),
            each(&|k| {
                format!(
                    "(f32.store $m0 (i32.add (local.get $y) (i32.mul (local.get $y_stride) (i32.const {k}))) (f32x4.extract_lane {k} (local.get $acc)))"
                )
            }),
        )
    } else {
        (
            each(&|k| format!("(local.set $sum{k} (f32.const 0))")),
            each(&|k| {
                format!(
                    "(f32.store $m0 (i32.add (local.get $y) (i32.mul (local.get $y_stride) (i32.const {k}))) (local.get $sum{k}))"
                )
            }),
        )
    };
    let name = if inputs == 1 {
        format!("mv_{ty}_{shard}")
    } else {
        format!("mv{inputs}_{ty}_{shard}")
    };
    format!(
        r#"
  (func ${name} (param $p i64) (param $rows i64) (param $row_bytes i64) (param $blocks i32) (param $q_start i32) (param $g_start i32) (param $y i32) (param $q_stride i32) (param $g_stride i32) (param $y_stride i32)
    (local $row i64) (local $b i32) {locals} (local $d f32) (local $dmin f32) (local $half i32) (local $bits i32) (local $sa i32) (local $sb i32)
    (local $w1 v128) (local $w2 v128) (local $w3 v128) (local $w4 v128) (local $h1 v128) (local $h2 v128) (local $qh v128)
    (local $t v128) (local $u v128) (local $s v128) (local $wl v128) (local $wh v128)
    (local $acc v128) (local $v0 v128) (local $v1 v128) (local $v2 v128) (local $v3 v128)
    (block $done
      (loop $each_row
        (br_if $done (i64.eqz (local.get $rows)))
        (local.set $row (local.get $p))
        {zero}
        (local.set $b (local.get $blocks)) {start}
        (block $no_blocks
          (br_if $no_blocks (i32.eqz (local.get $b)))
          (loop $each_block{body}
            (local.set $p (i64.add (local.get $p) (i64.const {size})))
            {advance}
            (br_if $each_block (local.tee $b (i32.sub (local.get $b) (i32.const 1))))))
        {store}
        (local.set $y (i32.add (local.get $y) (i32.const 4)))
        (local.set $p (i64.add (local.get $row) (local.get $row_bytes)))
        (local.set $rows (i64.sub (local.get $rows) (i64.const 1)))
        (br $each_row))))"#,
        locals = each(&|k| format!("(local $q{k} i32) (local $g{k} i32) (local $sum{k} f32)")),
        start = each(&|k| format!(
            "(local.set $q{k} (i32.add (local.get $q_start) (i32.mul (local.get $q_stride) (i32.const {k})))) \
             (local.set $g{k} (i32.add (local.get $g_start) (i32.mul (local.get $g_stride) (i32.const {k}))))"
        )),
        advance = each(&|k| format!(
            "(local.set $q{k} (i32.add (local.get $q{k}) (i32.const {q_step}))) (local.set $g{k} (i32.add (local.get $g{k}) (i32.const {g_step})))",
            q_step = 32 * groups,
            g_step = META_BYTES * groups,
        )),
    )
}

/// The `matvec(tensor, first_row, rows, x, y, tmp)` export and its kernels
/// for `types`, each per shard. `tmp` needs 4 bytes per element of x: x's
/// quants and group metadata for quantized types, one dequantized row for
/// float types.
pub fn matvec_functions(shards: u32, types: &[GgmlType], dot: DotProduct) -> String {
    let mut wat = abi::fill(include_str!("../wat/matvec.wat"), &[]);
    wat += r#"
  ;; y[r] = W[first + r] . x for rows [first, first + rows) of tensor $t.
  (func (export "matvec") (param $t i32) (param $first i64) (param $rows i64) (param $x i32) (param $y i32) (param $tmp i32)"#;
    wat += &quants::type_dispatch(types, |ty| {
        let (name, block) = (ty.name(), ty.block_size());
        if ty.is_float() {
            "(return (call $mv_float (local.get $t) (local.get $first) (local.get $rows) (local.get $x) (local.get $y) (local.get $tmp) (i32.wrap_i64 (local.get $row_len))))".into()
        } else {
            format!(
                "(call $quantize_x (local.get $x) (i32.wrap_i64 (local.get $row_len)) (local.get $tmp) (i32.add (local.get $tmp) (i32.wrap_i64 (local.get $row_len))))
      (return (call $mvr_{name} (local.get $shard) (local.get $src) (local.get $rows) (local.get $row_bytes)
        (i32.wrap_i64 (i64.div_u (local.get $row_len) (i64.const {block}))) (local.get $tmp)
        (i32.add (local.get $tmp) (i32.wrap_i64 (local.get $row_len))) (local.get $y) (i32.const 0) (i32.const 0) (i32.const 0)))"
            )
        }
    });
    wat += r#"
  ;; Y[b][r] = W[first + r] . X[b] for rows [first, first + rows) of tensor $t
  ;; and $batch inputs of row_len f32 at $x (one after another); Y[b] starts
  ;; at $y + 4 $y_stride b. Each block of ROW_CHUNK rows is read from the
  ;; shard once and dotted with every input while it sits in L1, so a batch
  ;; costs about one pass over the weights. $tmp holds 1.5 bytes per input
  ;; element (x's quants and group metadata).
  (func $matmul (param $t i32) (param $first i64) (param $rows i64) (param $x i32) (param $batch i32) (param $y i32) (param $y_stride i32) (param $tmp i32)
    (local $b i32) (local $r0 i64) (local $count i64) (local $n i32) (local $metas i32)"#;
    wat += &quants::type_dispatch(types, |ty| {
        let (name, block) = (ty.name(), ty.block_size());
        if ty.is_float() {
            return r#"(loop $each_input
        (call $mv_float (local.get $t) (local.get $first) (local.get $rows)
          (i32.add (local.get $x) (i32.shl (i32.mul (local.get $b) (i32.wrap_i64 (local.get $row_len))) (i32.const 2)))
          (i32.add (local.get $y) (i32.shl (i32.mul (local.get $b) (local.get $y_stride)) (i32.const 2)))
          (local.get $tmp) (i32.wrap_i64 (local.get $row_len)))
        (br_if $each_input (i32.lt_u (local.tee $b (i32.add (local.get $b) (i32.const 1))) (local.get $batch))))
      (return)"#
                .to_string();
        }
        format!(
            r#"(local.set $n (i32.wrap_i64 (local.get $row_len)))
      (local.set $metas (i32.add (local.get $tmp) (i32.mul (local.get $batch) (local.get $n))))
      (loop $each_input
        (call $quantize_x (i32.add (local.get $x) (i32.shl (i32.mul (local.get $b) (local.get $n)) (i32.const 2))) (local.get $n)
          (i32.add (local.get $tmp) (i32.mul (local.get $b) (local.get $n)))
          (i32.add (local.get $metas) (i32.mul (local.get $b) (i32.shr_u (local.get $n) (i32.const 1)))))
        (br_if $each_input (i32.lt_u (local.tee $b (i32.add (local.get $b) (i32.const 1))) (local.get $batch))))
      (block $rows_done
        (loop $each_chunk
          (br_if $rows_done (i64.ge_u (local.get $r0) (local.get $rows)))
          (local.set $count (select (i64.const {ROW_CHUNK}) (i64.sub (local.get $rows) (local.get $r0))
            (i64.lt_u (i64.const {ROW_CHUNK}) (i64.sub (local.get $rows) (local.get $r0)))))
          ;; {INPUTS} inputs at a time while they last, then one at a time.
          (local.set $b (i32.const 0))
          (block $groups_done
            (loop $each_group
              (br_if $groups_done (i32.gt_u (i32.add (local.get $b) (i32.const {INPUTS})) (local.get $batch)))
              (call $mv{INPUTS}_{name} (local.get $shard) (i64.add (local.get $src) (i64.mul (local.get $r0) (local.get $row_bytes)))
                (local.get $count) (local.get $row_bytes) (i32.wrap_i64 (i64.div_u (local.get $row_len) (i64.const {block})))
                (i32.add (local.get $tmp) (i32.mul (local.get $b) (local.get $n)))
                (i32.add (local.get $metas) (i32.mul (local.get $b) (i32.shr_u (local.get $n) (i32.const 1))))
                (i32.add (local.get $y) (i32.shl (i32.add (i32.mul (local.get $b) (local.get $y_stride)) (i32.wrap_i64 (local.get $r0))) (i32.const 2)))
                (local.get $n) (i32.shr_u (local.get $n) (i32.const 1)) (i32.shl (local.get $y_stride) (i32.const 2)))
              (local.set $b (i32.add (local.get $b) (i32.const {INPUTS})))
              (br $each_group)))
          (block $inputs_done
            (loop $each_input
              (br_if $inputs_done (i32.ge_u (local.get $b) (local.get $batch)))
              (call $mvr_{name} (local.get $shard) (i64.add (local.get $src) (i64.mul (local.get $r0) (local.get $row_bytes)))
                (local.get $count) (local.get $row_bytes) (i32.wrap_i64 (i64.div_u (local.get $row_len) (i64.const {block})))
                (i32.add (local.get $tmp) (i32.mul (local.get $b) (local.get $n)))
                (i32.add (local.get $metas) (i32.mul (local.get $b) (i32.shr_u (local.get $n) (i32.const 1))))
                (i32.add (local.get $y) (i32.shl (i32.add (i32.mul (local.get $b) (local.get $y_stride)) (i32.wrap_i64 (local.get $r0))) (i32.const 2)))
                (i32.const 0) (i32.const 0) (i32.const 0))
              (local.set $b (i32.add (local.get $b) (i32.const 1)))
              (br $each_input)))
          (local.set $r0 (i64.add (local.get $r0) (i64.const {ROW_CHUNK})))
          (br $each_chunk)))
      (return)"#,
            INPUTS = INPUTS_AT_ONCE,
        )
    });
    for &ty in types.iter().filter(|t| !t.is_float()) {
        let (name, block, size) = (ty.name(), ty.block_size(), ty.type_size());
        let params = [
            "p i64",
            "rows i64",
            "row_bytes i64",
            "blocks i32",
            "q i32",
            "g i32",
            "y i32",
            "q_stride i32",
            "g_stride i32",
            "y_stride i32",
        ];
        for (label, inputs) in [
            (String::new(), 1),
            (INPUTS_AT_ONCE.to_string(), INPUTS_AT_ONCE),
        ] {
            let target = format!("mv{label}_{name}");
            wat += &crate::shard_dispatch(&format!("${target}"), &target, &params, None, shards);
            for k in 0..shards {
                wat += &row_loop(name, block, size, k, dot, inputs);
            }
        }
        let target = format!("mvr_{name}");
        wat += &crate::shard_dispatch(&format!("${target}"), &target, &params, None, shards);
        for k in 0..shards {
            wat += &row_block_loop(name, block, size, k, dot);
        }
    }
    wat
}
