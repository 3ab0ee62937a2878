//! The `dequantize` export: rows of a tensor as f32 in scratch, bit-exact
//! with gguf-py (the same f32 operations in the same order, lane by lane).
//! Quantized types are unpacked a 32-element group at a time by
//! [`crate::quants`]; float types are converted 8 elements at a time.

use std::fmt::Write;

use shardload_gguf::GgmlType;

use crate::abi;
use crate::quants::{self, Min, Scale};

/// `$f16`: f16 bits to f32 exactly, as a function (for the tails of F16 rows
/// and `matvec`'s x scales; block scales are converted inline).
fn f16_function() -> String {
    format!(
        "
  (func $f16 (param $half i32) (result f32)
    (local $bits i32) (local $f f32){}
    (local.get $f))",
        quants::f16_inline("$f", "(local.get $half)")
    )
}

/// The statements that write group `g` of a block (at `$p` in `$m{m}`) as 32
/// f32 at `$out + 128 g`.
fn group_code(ty: &str, m: u32, g: u32) -> String {
    let group = quants::group(ty, m, g);
    let mut code = format!("\n        {}", group.setup);
    for (h, quants) in [group.lo, group.hi].into_iter().enumerate() {
        let quants = match group.offset {
            0 => quants,
            offset => format!("(i8x16.sub {quants} {})", quants::splat8(offset as u8)),
        };
        let scale = match &group.scale {
            Scale::Whole(a) => a.clone(),
            Scale::Halves { a, sa, sb } => {
                format!("(f32.mul {a} (f32.convert_i32_s {}))", [sa, sb][h])
            }
        };
        let _ = write!(
            code,
            "\n        (local.set $t {quants}) (local.set $scale (f32x4.splat {scale}))"
        );
        if let Some(min) = &group.min {
            let min = match min {
                Min::Whole(b) => b.clone(),
                Min::Halves { b, ma, mb } => {
                    format!("(f32.mul {b} (f32.convert_i32_s {}))", [ma, mb][h])
                }
            };
            let _ = write!(code, " (local.set $min (f32x4.splat {min}))");
        }
        for (k, (outer, inner)) in [
            ("low", "low"),
            ("low", "high"),
            ("high", "low"),
            ("high", "high"),
        ]
        .into_iter()
        .enumerate()
        {
            let value = format!(
                "(f32x4.convert_i32x4_s (i32x4.extend_{inner}_i16x8_s (i16x8.extend_{outer}_i8x16_s (local.get $t))))"
            );
            let mut weight = format!("(f32x4.mul (local.get $scale) {value})");
            if group.min.is_some() {
                weight = format!("(f32x4.add {weight} (local.get $min))");
            }
            let _ = write!(
                code,
                "\n        (v128.store $m0 offset={} (local.get $out) {weight})",
                128 * g + 64 * h as u32 + 16 * k as u32
            );
        }
    }
    code
}

/// `$dq_{name}_{shard}(p, n, out)`: `n` blocks (elements, for float types)
/// from `$p` in the shard's memory to f32 at `$out`.
fn kernel(ty: GgmlType, shard: u32) -> String {
    let (name, block, size) = (ty.name(), ty.block_size(), ty.type_size());
    let m = shard + 1;
    let header =
        format!("\n  (func $dq_{name}_{shard} (param $p i64) (param $n i64) (param $out i32)");
    match name {
        "F32" => format!(
            "{header}
    (memory.copy $m0 $m{m} (local.get $out) (local.get $p) (i32.wrap_i64 (i64.shl (local.get $n) (i64.const 2)))))"
        ),
        "F16" | "BF16" => {
            // Eight elements per step, then one at a time.
            let (four, one) = if name == "F16" {
                (
                    "(call $f16x4 (i32x4.extend_{half}_i16x8_u (local.get $t)))",
                    "(i32.reinterpret_f32 (call $f16 (i32.load16_u $m{m} (local.get $p))))",
                )
            } else {
                (
                    "(i32x4.shl (i32x4.extend_{half}_i16x8_u (local.get $t)) (i32.const 16))",
                    "(i32.shl (i32.load16_u $m{m} (local.get $p)) (i32.const 16))",
                )
            };
            let four = |half: &str| four.replace("{half}", half);
            let one = one.replace("{m}", &m.to_string());
            format!(
                r#"{header}
    (local $t v128)
    (block $no_more_eights
      (loop $eights
        (br_if $no_more_eights (i64.lt_u (local.get $n) (i64.const 8)))
        (local.set $t (v128.load $m{m} (local.get $p)))
        (v128.store $m0 (local.get $out) {low})
        (v128.store $m0 offset=16 (local.get $out) {high})
        (local.set $p (i64.add (local.get $p) (i64.const 16)))
        (local.set $out (i32.add (local.get $out) (i32.const 32)))
        (local.set $n (i64.sub (local.get $n) (i64.const 8)))
        (br $eights)))
    (block $done
      (loop $ones
        (br_if $done (i64.eqz (local.get $n)))
        (i32.store $m0 (local.get $out) {one})
        (local.set $p (i64.add (local.get $p) (i64.const 2)))
        (local.set $out (i32.add (local.get $out) (i32.const 4)))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $ones))))"#,
                low = four("low"),
                high = four("high"),
            )
        }
        _ => {
            let groups: String = (0..(block / 32) as u32).map(|g| group_code(name, m, g)).collect();
            format!(
                r#"{header}
    (local $d f32) (local $dmin f32) (local $half i32) (local $bits i32) (local $sa i32) (local $sb i32) (local $scale v128) (local $min v128)
    (local $w1 v128) (local $w2 v128) (local $w3 v128) (local $w4 v128) (local $h1 v128) (local $h2 v128) (local $qh v128) (local $t v128)
    (block $done
      (loop $blocks
        (br_if $done (i64.eqz (local.get $n))){scales}{groups}
        (local.set $p (i64.add (local.get $p) (i64.const {size})))
        (local.set $out (i32.add (local.get $out) (i32.const {out_step})))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $blocks))))"#,
                scales = quants::block_scales(name, m),
                out_step = block * 4,
            )
        }
    }
}

/// The `dequantize(tensor, first_row, rows, out)` export and a kernel per
/// shard for each of `types`, plus the functions all kernels share.
pub fn dequantize_functions(shards: u32, types: &[GgmlType]) -> String {
    let mut wat = f16_function() + &abi::fill(include_str!("../wat/kernels.wat"), &[]);
    wat += r#"
  ;; Rows [first, first + rows) of tensor $t as f32 at scratch offset $out.
  (func $dequantize (export "dequantize") (param $t i32) (param $first i64) (param $rows i64) (param $out i32)"#;
    wat += &quants::type_dispatch(types, |ty| {
        let (name, block) = (ty.name(), ty.block_size());
        format!(
            "(return (call $dq_{name} (local.get $shard) (local.get $src)
        (i64.div_u (i64.mul (local.get $rows) (local.get $row_len)) (i64.const {block}))
        (local.get $out)))"
        )
    });
    for &ty in types {
        wat += &crate::shard_dispatch(
            &format!("$dq_{}", ty.name()),
            &format!("dq_{}", ty.name()),
            &["p i64", "n i64", "out i32"],
            None,
            shards,
        );
        for k in 0..shards {
            wat += &kernel(ty, k);
        }
    }
    wat
}
