//! Compute kernels over weights in place: `dequantize` rows of a tensor into
//! f32 in scratch memory. Each kernel is emitted once per shard memory (loads
//! name their memory) and reached through a type dispatch, then a shard one.
//! Results are bit-exact with gguf-py: the same f32 operations in the same order.

use std::fmt::Write;

/// (ggml type id, name, elements per block, bytes per block) of the types the
/// guest can dequantize; the host refuses any other type by name.
pub const DEQUANTIZE_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (30, "BF16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (8, "Q8_0", 32, 34),
];

/// The loop body of one kernel over memory `$m{m}`: `$src` walks the blocks,
/// `$out` the f32 output, `$n` counts blocks down.
fn block_body(name: &str, m: u32) -> String {
    match name {
        "F32" => String::new(),
        "F16" => format!(
            "(f32.store $m0 (local.get $out) (call $f16 (i32.load16_u $m{m} (local.get $src))))"
        ),
        "BF16" => format!(
            "(i32.store $m0 (local.get $out) (i32.shl (i32.load16_u $m{m} (local.get $src)) (i32.const 16)))"
        ),
        "Q8_0" => format!(
            r#"(local.set $d (call $f16 (i32.load16_u $m{m} (local.get $src))))
          (local.set $j (i32.const 0))
          (loop $elements
            (f32.store $m0 (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 2)))
              (f32.mul (f32.convert_i32_s (i32.load8_s $m{m} offset=2 (i64.add (local.get $src) (i64.extend_i32_u (local.get $j)))))
                       (local.get $d)))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br_if $elements (i32.lt_u (local.get $j) (i32.const 32))))"#
        ),
        "Q4_0" | "Q4_1" => {
            let (qs, value) = if name == "Q4_0" {
                (
                    "offset=2",
                    "(f32.mul (local.get $d) (f32.convert_i32_s (i32.sub (local.get $q) (i32.const 8))))",
                )
            } else {
                (
                    "offset=4",
                    "(f32.add (f32.mul (local.get $d) (f32.convert_i32_u (local.get $q))) (local.get $min))",
                )
            };
            let min = if name == "Q4_1" {
                format!(
                    "(local.set $min (call $f16 (i32.load16_u $m{m} offset=2 (local.get $src))))"
                )
            } else {
                String::new()
            };
            format!(
                r#"(local.set $d (call $f16 (i32.load16_u $m{m} (local.get $src))))
          {min}
          (local.set $j (i32.const 0))
          (loop $elements
            (local.set $byte (i32.load8_u $m{m} {qs} (i64.add (local.get $src) (i64.extend_i32_u (local.get $j)))))
            (local.set $q (i32.and (local.get $byte) (i32.const 15)))
            (f32.store $m0 (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 2))) {value})
            (local.set $q (i32.shr_u (local.get $byte) (i32.const 4)))
            (f32.store $m0 offset=64 (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 2))) {value})
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br_if $elements (i32.lt_u (local.get $j) (i32.const 16))))"#
            )
        }
        other => unreachable!("no kernel for {other}"),
    }
}

/// `$dq_{type}_{shard}(src, blocks, out)`: dequantizes `blocks` blocks.
fn kernel(name: &str, block: u64, size: u64, shard: u32) -> String {
    let m = shard + 1;
    if name == "F32" {
        return format!(
            r#"
  (func $dq_{name}_{shard} (param $src i64) (param $n i64) (param $out i32)
    (memory.copy $m0 $m{m} (local.get $out) (local.get $src) (i32.wrap_i64 (i64.shl (local.get $n) (i64.const 2)))))"#
        );
    }
    format!(
        r#"
  (func $dq_{name}_{shard} (param $src i64) (param $n i64) (param $out i32)
    (local $d f32) (local $min f32) (local $j i32) (local $byte i32) (local $q i32)
    (block $done
      (loop $blocks
        (br_if $done (i64.eqz (local.get $n)))
        {body}
        (local.set $src (i64.add (local.get $src) (i64.const {size})))
        (local.set $out (i32.add (local.get $out) (i32.const {out_step})))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $blocks))))"#,
        body = block_body(name, m),
        out_step = block * 4,
    )
}

/// The `dequantize(tensor, first_row, rows, out)` export, its dispatchers and
/// every (type, shard) kernel, plus the exact f16 -> f32 conversion.
pub fn dequantize_functions(shards: u32) -> String {
    let mut wat = String::from(
        r#"
  ;; f16 bits -> f32, exactly: shift the magnitude into f32 position and
  ;; rescale by 2^112 (exact for normals and subnormals); infinities and NaNs
  ;; keep an all-ones exponent; the sign is copied.
  (func $f16 (param $h i32) (result f32)
    (local $bits i32)
    (local.set $bits (i32.shl (i32.and (local.get $h) (i32.const 0x7fff)) (i32.const 13)))
    (f32.reinterpret_i32 (i32.or
      (i32.shl (i32.and (local.get $h) (i32.const 0x8000)) (i32.const 16))
      (if (result i32) (i32.eq (i32.and (local.get $h) (i32.const 0x7c00)) (i32.const 0x7c00))
        (then (i32.or (local.get $bits) (i32.const 0x7f800000)))
        (else (i32.reinterpret_f32 (f32.mul (f32.reinterpret_i32 (local.get $bits)) (f32.const 0x1p112))))))))
"#,
    );
    // The export: find the tensor, check the rows lie inside it, dispatch on type.
    let max_id = DEQUANTIZE_TYPES.iter().map(|t| t.0).max().unwrap_or(0);
    let _ = write!(
        wat,
        r#"
  ;; Rows [first, first + rows) of tensor $t as f32 at scratch offset $out.
  (func (export "dequantize") (param $t i32) (param $first i64) (param $rows i64) (param $out i32)
    (local $e i32) (local $row_len i64) (local $row_bytes i64) (local $block i64) (local $size i64) (local $shard i32)
    (local.set $e (call $tensor_entry (local.get $t)))
    (local.set $row_len (i64.load $m0 offset=24 (local.get $e)))
    (local.set $shard (i32.load $m0 (local.get $e)))
    (block $unsupported
"#
    );
    for (_, name, _, _) in DEQUANTIZE_TYPES.iter().rev() {
        let _ = writeln!(wat, "    (block $t_{name}");
    }
    let labels: String = (0..=max_id)
        .map(|id| match DEQUANTIZE_TYPES.iter().find(|t| t.0 == id) {
            Some((_, name, _, _)) => format!("$t_{name} "),
            None => "$unsupported ".to_string(),
        })
        .collect();
    let _ = writeln!(
        wat,
        "      (br_table {labels}$unsupported (i32.load $m0 offset=4 (local.get $e))))"
    );
    for (_, name, block, size) in DEQUANTIZE_TYPES {
        let _ = writeln!(
            wat,
            "      (local.set $block (i64.const {block})) (local.set $size (i64.const {size}))
      (local.set $row_bytes (i64.mul (i64.div_u (local.get $row_len) (local.get $block)) (local.get $size)))
      (call $check_rows (local.get $e) (local.get $first) (local.get $rows) (local.get $row_bytes))
      (return (call $dq_{name} (local.get $shard)
        (i64.add (i64.load $m0 offset=8 (local.get $e)) (i64.mul (local.get $first) (local.get $row_bytes)))
        (i64.div_u (i64.mul (local.get $rows) (local.get $row_len)) (local.get $block))
        (local.get $out))))"
        );
    }
    wat += "    unreachable)\n";
    wat += r#"
  ;; Traps unless rows [first, first + rows) lie inside the tensor.
  (func $check_rows (param $e i32) (param $first i64) (param $rows i64) (param $row_bytes i64)
    (local $end i64)
    (local.set $end (i64.add (local.get $first) (local.get $rows)))
    (if (i64.lt_u (local.get $end) (local.get $first)) (then unreachable))
    (if (i64.gt_u (local.get $end) (i64.div_u (i64.load $m0 offset=16 (local.get $e)) (local.get $row_bytes)))
      (then unreachable)))
"#;
    for (_, name, block, size) in DEQUANTIZE_TYPES {
        let _ = write!(
            wat,
            "\n  (func $dq_{name} (param $shard i32) (param $src i64) (param $n i64) (param $out i32)\n    (block $unknown_shard\n"
        );
        for k in (0..shards).rev() {
            let _ = writeln!(wat, "    (block $s{k}");
        }
        let targets: String = (0..shards).map(|k| format!("$s{k} ")).collect();
        let _ = writeln!(
            wat,
            "      (br_table {targets}$unknown_shard (local.get $shard)))"
        );
        for k in 0..shards {
            let _ = writeln!(
                wat,
                "      (return (call $dq_{name}_{k} (local.get $src) (local.get $n) (local.get $out))))"
            );
        }
        wat += "    unreachable)";
        for k in 0..shards {
            wat += &kernel(name, *block, *size, k);
        }
    }
    wat
}
