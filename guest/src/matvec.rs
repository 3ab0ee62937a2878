//! The guest's `matvec`: llama.cpp's integer algorithm, operation for
//! operation what `shardload_quant::matvec` does natively (so the two agree
//! bit for bit). `x` is quantized to Q8_0 once per call; each row is dotted
//! with it 32 elements (a *group*) at a time in exact i32 arithmetic with
//! SIMD128, and per group `sum = sum + (a · dx) · isum` (then
//! `+ (b · dx) · jsum` for types with a min). Float types (F32, F16, BF16)
//! are dequantized exactly and dotted in f32 with x itself.
//!
//! Weight quants are unpacked into i8x16 vectors. Where every quant of a type
//! is in 0..=127, the 16-lane dot can be relaxed SIMD's
//! `i32x4.relaxed_dot_i8x16_i7x16_add_s` (one `pmaddubsw` + `pmaddwd` on
//! x86), which is exact and deterministic for such operands; otherwise (or
//! when relaxed SIMD is off) it is `i32x4.dot_i16x8_s` over sign-extended
//! halves. Both give the same integers, so the same y.

use std::fmt::Write;

use crate::quants::{self, KernelType, Min, Scale};

/// How 16-lane integer dot products are emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotProduct {
    /// Relaxed SIMD's i8 × i7 dot, for types whose quants fit in 7 bits.
    Relaxed,
    /// Plain SIMD128 only: `i32x4.dot_i16x8_s` over extended halves.
    Plain,
}

/// The per-group metadata `$quantize_x` writes for each 32 elements of x:
/// f16-rounded scale (f32), quant sums of elements 0..16 and 16..32, their sum.
const META_BYTES: u32 = 16;

/// The i32x4 sum of `w · x` over 16 lanes: `w` an i8x16 expression (values in
/// 0..=127 when `unsigned`), x the 16 quants at `$q + at`.
fn dot16(w: &str, at: u32, unsigned: bool, dot: DotProduct) -> String {
    let x = format!("(v128.load $m0 offset={at} (local.get $q))");
    if unsigned && dot == DotProduct::Relaxed {
        return format!("(i32x4.relaxed_dot_i8x16_i7x16_add_s {x} {w} (v128.const i64x2 0 0))");
    }
    format!(
        "(i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.tee $t {w})) (i16x8.extend_low_i8x16_s (local.tee $u {x})))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $t)) (i16x8.extend_high_i8x16_s (local.get $u))))"
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

/// Group `g`'s x quant sum over all 32 elements (`half` None) or one half.
fn x_sum(g: u32, half: Option<u32>) -> String {
    let field = half.map_or(12, |h| 4 + 4 * h);
    format!(
        "(i32.load $m0 offset={} (local.get $g))",
        META_BYTES * g + field
    )
}

/// The statements for group `g`: x quants at `$q + 32 g`, meta at `$g + 16 g`.
fn group_code(ty: &str, m: u32, g: u32, dot: DotProduct) -> String {
    let gr = quants::group(ty, m, g);
    let (qa, qb) = (32 * g, 32 * g + 16);
    let dx = format!("(f32.load $m0 offset={} (local.get $g))", META_BYTES * g);
    let dot_a = dot16(&gr.lo, qa, gr.unsigned, dot);
    let dot_b = dot16(&gr.hi, qb, gr.unsigned, dot);
    let offset = gr.offset;
    let (a, isum) = match &gr.scale {
        Scale::Whole(a) => {
            let dots = lanes_sum(&format!("(i32x4.add {dot_a} {dot_b})"));
            let isum = if offset == 0 {
                dots
            } else {
                format!(
                    "(i32.sub {dots} (i32.mul (i32.const {offset}) {}))",
                    x_sum(g, None)
                )
            };
            (a, isum)
        }
        Scale::Halves { a, sa, sb } => {
            let scaled = lanes_sum(&format!(
                "(i32x4.add (i32x4.mul {dot_a} (i32x4.splat (local.tee $sa {sa}))) (i32x4.mul {dot_b} (i32x4.splat (local.tee $sb {sb}))))"
            ));
            let isum = if offset == 0 {
                scaled
            } else {
                format!(
                    "(i32.sub {scaled} (i32.mul (i32.const {offset}) (i32.add
                       (i32.mul (local.get $sa) {}) (i32.mul (local.get $sb) {}))))",
                    x_sum(g, Some(0)),
                    x_sum(g, Some(1))
                )
            };
            (a, isum)
        }
    };
    let mut code = format!(
        "\n        {setup}
        (local.set $sum (f32.add (local.get $sum) (f32.mul (f32.mul {a} {dx}) (f32.convert_i32_s {isum}))))",
        setup = gr.setup,
    );
    let min = gr.min.map(|min| match min {
        Min::Whole(b) => (b, x_sum(g, None)),
        Min::Halves { b, ma, mb } => (
            b,
            format!(
                "(i32.add (i32.mul {ma} {}) (i32.mul {mb} {}))",
                x_sum(g, Some(0)),
                x_sum(g, Some(1))
            ),
        ),
    });
    if let Some((b, jsum)) = min {
        let _ = write!(
            code,
            "\n        (local.set $sum (f32.add (local.get $sum) (f32.mul (f32.mul {b} {dx}) (f32.convert_i32_s {jsum}))))"
        );
    }
    code
}

/// `$mv_{ty}_{shard}`: `rows` rows of `ty` from `$p` (each `row_bytes`,
/// `blocks` blocks) dotted with the quantized x at `$q0` / `$g0`, f32 results at `$y`.
fn row_loop(ty: &str, block: u64, size: u64, shard: u32, dot: DotProduct) -> String {
    let m = shard + 1;
    let groups = (block / 32) as u32;
    let body: String = quants::block_scales(ty, m)
        + &(0..groups)
            .map(|g| group_code(ty, m, g, dot))
            .collect::<String>();
    format!(
        r#"
  (func $mv_{ty}_{shard} (param $p i64) (param $rows i64) (param $row_bytes i64) (param $blocks i32) (param $q0 i32) (param $g0 i32) (param $y i32)
    (local $row i64) (local $b i32) (local $q i32) (local $g i32) (local $sum f32) (local $d f32) (local $dmin f32) (local $half i32) (local $bits i32) (local $sa i32) (local $sb i32)
    (local $w1 v128) (local $w2 v128) (local $w3 v128) (local $w4 v128) (local $h1 v128) (local $h2 v128) (local $qh v128)
    (local $t v128) (local $u v128) (local $s v128)
    (block $done
      (loop $each_row
        (br_if $done (i64.eqz (local.get $rows)))
        (local.set $row (local.get $p))
        (local.set $sum (f32.const 0))
        (local.set $b (local.get $blocks)) (local.set $q (local.get $q0)) (local.set $g (local.get $g0))
        (block $no_blocks
          (br_if $no_blocks (i32.eqz (local.get $b)))
          (loop $each_block{body}
            (local.set $p (i64.add (local.get $p) (i64.const {size})))
            (local.set $q (i32.add (local.get $q) (i32.const {q_step})))
            (local.set $g (i32.add (local.get $g) (i32.const {g_step})))
            (br_if $each_block (local.tee $b (i32.sub (local.get $b) (i32.const 1))))))
        (f32.store $m0 (local.get $y) (local.get $sum))
        (local.set $y (i32.add (local.get $y) (i32.const 4)))
        (local.set $p (i64.add (local.get $row) (local.get $row_bytes)))
        (local.set $rows (i64.sub (local.get $rows) (i64.const 1)))
        (br $each_row))))"#,
        q_step = 32 * groups,
        g_step = META_BYTES * groups,
    )
}

/// `$quantize_x(x, n, q, g)`: the n f32 at `x` (n a multiple of 32) to Q8_0
/// as gguf-py does (`d = max|x| / 127`, `q = roundf(x · (1 / d))`, `d` kept
/// as its f16 rounding), quants at `q`, per-group metadata at `g`.
const QUANTIZE_X: &str = r#"
  (func $quantize_x (param $x i32) (param $n i32) (param $q i32) (param $g i32)
    (local $end i32) (local $d f32) (local $id v128) (local $s0 i32) (local $s1 i32) (local $t v128) (local $s v128)
    (local $v0 v128) (local $v1 v128) (local $v2 v128) (local $v3 v128) (local $v4 v128) (local $v5 v128) (local $v6 v128) (local $v7 v128)
    (local.set $end (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
    (block $done
      (loop $groups
        (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
        (local.set $v0 (v128.load $m0 (local.get $x)))
        (local.set $v1 (v128.load $m0 offset=16 (local.get $x)))
        (local.set $v2 (v128.load $m0 offset=32 (local.get $x)))
        (local.set $v3 (v128.load $m0 offset=48 (local.get $x)))
        (local.set $v4 (v128.load $m0 offset=64 (local.get $x)))
        (local.set $v5 (v128.load $m0 offset=80 (local.get $x)))
        (local.set $v6 (v128.load $m0 offset=96 (local.get $x)))
        (local.set $v7 (v128.load $m0 offset=112 (local.get $x)))
        (local.set $t (f32x4.max
          (f32x4.max (f32x4.max (f32x4.abs (local.get $v0)) (f32x4.abs (local.get $v1))) (f32x4.max (f32x4.abs (local.get $v2)) (f32x4.abs (local.get $v3))))
          (f32x4.max (f32x4.max (f32x4.abs (local.get $v4)) (f32x4.abs (local.get $v5))) (f32x4.max (f32x4.abs (local.get $v6)) (f32x4.abs (local.get $v7))))))
        (local.set $d (f32.div
          (f32.max (f32.max (f32x4.extract_lane 0 (local.get $t)) (f32x4.extract_lane 1 (local.get $t)))
                   (f32.max (f32x4.extract_lane 2 (local.get $t)) (f32x4.extract_lane 3 (local.get $t))))
          (f32.const 127)))
        (local.set $id (f32x4.splat (select (f32.const 0) (f32.div (f32.const 1) (local.get $d)) (f32.eq (local.get $d) (f32.const 0)))))
        (v128.store $m0 (local.get $q) (local.tee $t (i8x16.narrow_i16x8_s
          (i16x8.narrow_i32x4_s (call $round_q (local.get $v0) (local.get $id)) (call $round_q (local.get $v1) (local.get $id)))
          (i16x8.narrow_i32x4_s (call $round_q (local.get $v2) (local.get $id)) (call $round_q (local.get $v3) (local.get $id))))))
        (local.set $s (i32x4.extadd_pairwise_i16x8_s (i16x8.extadd_pairwise_i8x16_s (local.get $t))))
        (local.set $s0 (i32.add (i32.add (i32x4.extract_lane 0 (local.get $s)) (i32x4.extract_lane 1 (local.get $s)))
                                (i32.add (i32x4.extract_lane 2 (local.get $s)) (i32x4.extract_lane 3 (local.get $s)))))
        (v128.store $m0 offset=16 (local.get $q) (local.tee $t (i8x16.narrow_i16x8_s
          (i16x8.narrow_i32x4_s (call $round_q (local.get $v4) (local.get $id)) (call $round_q (local.get $v5) (local.get $id)))
          (i16x8.narrow_i32x4_s (call $round_q (local.get $v6) (local.get $id)) (call $round_q (local.get $v7) (local.get $id))))))
        (local.set $s (i32x4.extadd_pairwise_i16x8_s (i16x8.extadd_pairwise_i8x16_s (local.get $t))))
        (local.set $s1 (i32.add (i32.add (i32x4.extract_lane 0 (local.get $s)) (i32x4.extract_lane 1 (local.get $s)))
                                (i32.add (i32x4.extract_lane 2 (local.get $s)) (i32x4.extract_lane 3 (local.get $s)))))
        (f32.store $m0 (local.get $g) (call $f16 (call $f32_to_f16 (local.get $d))))
        (i32.store $m0 offset=4 (local.get $g) (local.get $s0))
        (i32.store $m0 offset=8 (local.get $g) (local.get $s1))
        (i32.store $m0 offset=12 (local.get $g) (i32.add (local.get $s0) (local.get $s1)))
        (local.set $x (i32.add (local.get $x) (i32.const 128)))
        (local.set $q (i32.add (local.get $q) (i32.const 32)))
        (local.set $g (i32.add (local.get $g) (i32.const 16)))
        (br $groups))))

  ;; roundf(v * id) (half away from zero, as gguf-py's np_roundf) as i32x4.
  (func $round_q (param $v v128) (param $id v128) (result v128)
    (local $p v128) (local $a v128) (local $f v128)
    (local.set $p (f32x4.mul (local.get $v) (local.get $id)))
    (local.set $a (f32x4.abs (local.get $p)))
    (local.set $f (f32x4.floor (local.get $a)))
    (i32x4.trunc_sat_f32x4_s (v128.or
      (f32x4.add (local.get $f) (f32x4.floor (f32x4.mul (f32x4.sub (local.get $a) (local.get $f)) (f32x4.splat (f32.const 2)))))
      (v128.and (local.get $p) (v128.const i32x4 0x80000000 0x80000000 0x80000000 0x80000000)))))

  ;; f32 -> f16 bits, rounding to nearest even (F. Giesen's float_to_half_fast3_rtne).
  (func $f32_to_f16 (param $f f32) (result i32)
    (local $u i32) (local $sign i32) (local $o i32)
    (local.set $u (i32.reinterpret_f32 (local.get $f)))
    (local.set $sign (i32.and (local.get $u) (i32.const 0x80000000)))
    (local.set $u (i32.xor (local.get $u) (local.get $sign)))
    (if (i32.ge_u (local.get $u) (i32.const 0x47800000))
      (then (local.set $o (select (i32.const 0x7e00) (i32.const 0x7c00) (i32.gt_u (local.get $u) (i32.const 0x7f800000)))))
      (else
        (if (i32.lt_u (local.get $u) (i32.const 0x38800000))
          (then (local.set $o (i32.sub
            (i32.reinterpret_f32 (f32.add (f32.reinterpret_i32 (local.get $u)) (f32.reinterpret_i32 (i32.const 0x3f000000))))
            (i32.const 0x3f000000))))
          (else (local.set $o (i32.shr_u
            (i32.add (i32.add (local.get $u) (i32.const 0xc8000fff)) (i32.and (i32.shr_u (local.get $u) (i32.const 13)) (i32.const 1)))
            (i32.const 13)))))))
    (i32.or (local.get $o) (i32.shr_u (local.get $sign) (i32.const 16))))
"#;

/// The `matvec(tensor, first_row, rows, x, y, tmp)` export and its kernels
/// for `types`, each per shard. `tmp` needs 4 bytes per element of x: x's
/// quants and group metadata for quantized types, one dequantized row for
/// float types.
pub fn matvec_functions(shards: u32, types: &[&KernelType], dot: DotProduct) -> String {
    let mut wat = String::from(QUANTIZE_X);
    wat += r#"
  ;; y[r] = W[first + r] . x for rows [first, first + rows) of tensor $t.
  (func (export "matvec") (param $t i32) (param $first i64) (param $rows i64) (param $x i32) (param $y i32) (param $tmp i32)"#;
    wat += &quants::type_dispatch(types, |&(_, name, block, _)| {
        if quants::is_float(name) {
            "(return (call $mv_float (local.get $t) (local.get $first) (local.get $rows) (local.get $x) (local.get $y) (local.get $tmp) (i32.wrap_i64 (local.get $row_len))))".into()
        } else {
            format!(
                "(call $quantize_x (local.get $x) (i32.wrap_i64 (local.get $row_len)) (local.get $tmp) (i32.add (local.get $tmp) (i32.wrap_i64 (local.get $row_len))))
      (return (call $mv_{name} (local.get $shard) (local.get $src) (local.get $rows) (local.get $row_bytes)
        (i32.wrap_i64 (i64.div_u (local.get $row_len) (i64.const {block}))) (local.get $tmp)
        (i32.add (local.get $tmp) (i32.wrap_i64 (local.get $row_len))) (local.get $y)))"
            )
        }
    });
    wat += MATVEC_FLOAT;
    for &&(_, name, block, size) in types.iter().filter(|t| !quants::is_float(t.1)) {
        wat += &crate::shard_dispatch(
            &format!("$mv_{name}"),
            &format!("mv_{name}"),
            &[
                "p i64",
                "rows i64",
                "row_bytes i64",
                "blocks i32",
                "q i32",
                "g i32",
                "y i32",
            ],
            None,
            shards,
        );
        for k in 0..shards {
            wat += &row_loop(name, block, size, k, dot);
        }
    }
    wat
}

/// Float types: each row dequantized exactly into `tmp`, then dotted with x
/// itself by four f32x4 accumulators (`|y - exact| <= n 2^-24 sum |w x|`).
const MATVEC_FLOAT: &str = r#"
  (func $mv_float (param $t i32) (param $first i64) (param $rows i64) (param $x i32) (param $y i32) (param $tmp i32) (param $n i32)
    (local $r i64)
    (block $done
      (loop $each_row
        (br_if $done (i64.ge_u (local.get $r) (local.get $rows)))
        (call $dequantize (local.get $t) (i64.add (local.get $first) (local.get $r)) (i64.const 1) (local.get $tmp))
        (f32.store $m0 (i32.add (local.get $y) (i32.shl (i32.wrap_i64 (local.get $r)) (i32.const 2)))
          (call $dot (local.get $tmp) (local.get $x) (local.get $n)))
        (local.set $r (i64.add (local.get $r) (i64.const 1)))
        (br $each_row))))

  ;; The dot product of n f32s at $a and $b in scratch: four f32x4
  ;; accumulators over 16-element steps, then the scalar tail.
  (func $dot (param $a i32) (param $b i32) (param $n i32) (result f32)
    (local $i i32) (local $s0 v128) (local $s1 v128) (local $s2 v128) (local $s3 v128) (local $tail f32)
    (block $no_more_sixteens
      (loop $sixteens
        (br_if $no_more_sixteens (i32.gt_u (i32.add (local.get $i) (i32.const 16)) (local.get $n)))
        (local.set $s0 (f32x4.add (local.get $s0) (f32x4.mul (v128.load $m0 (local.get $a)) (v128.load $m0 (local.get $b)))))
        (local.set $s1 (f32x4.add (local.get $s1) (f32x4.mul (v128.load $m0 offset=16 (local.get $a)) (v128.load $m0 offset=16 (local.get $b)))))
        (local.set $s2 (f32x4.add (local.get $s2) (f32x4.mul (v128.load $m0 offset=32 (local.get $a)) (v128.load $m0 offset=32 (local.get $b)))))
        (local.set $s3 (f32x4.add (local.get $s3) (f32x4.mul (v128.load $m0 offset=48 (local.get $a)) (v128.load $m0 offset=48 (local.get $b)))))
        (local.set $a (i32.add (local.get $a) (i32.const 64)))
        (local.set $b (i32.add (local.get $b) (i32.const 64)))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $sixteens)))
    (block $no_more
      (loop $ones
        (br_if $no_more (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $tail (f32.add (local.get $tail) (f32.mul (f32.load $m0 (local.get $a)) (f32.load $m0 (local.get $b)))))
        (local.set $a (i32.add (local.get $a) (i32.const 4)))
        (local.set $b (i32.add (local.get $b) (i32.const 4)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $ones)))
    (local.set $s0 (f32x4.add (f32x4.add (local.get $s0) (local.get $s1)) (f32x4.add (local.get $s2) (local.get $s3))))
    (f32.add
      (f32.add (f32.add (f32x4.extract_lane 0 (local.get $s0)) (f32x4.extract_lane 1 (local.get $s0)))
               (f32.add (f32x4.extract_lane 2 (local.get $s0)) (f32x4.extract_lane 3 (local.get $s0))))
      (local.get $tail)))
"#;
