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
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (20, "IQ4_NL", 32, 18),
    (23, "IQ4_XS", 256, 136),
];

/// IQ4_NL's and IQ4_XS's 16 levels.
pub(crate) const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Expressions over the block at `$src` in memory `$m{m}`, element `$e`.
struct Block(u32);

impl Block {
    /// Byte `offset` (an i32 expression) of the block, unsigned.
    fn byte(&self, offset: &str) -> String {
        format!(
            "(i32.load8_u $m{} (i64.add (local.get $src) (i64.extend_i32_u {offset})))",
            self.0
        )
    }
    /// The f16 at constant byte offset `at`, as f32.
    fn half(&self, at: u32) -> String {
        format!(
            "(call $f16 (i32.load16_u $m{} offset={at} (local.get $src)))",
            self.0
        )
    }
    /// The 2-bit value of element `$e` in the 64 bytes at `at` (Q2_K, Q3_K):
    /// each half of the block takes 32 bytes, four 2-bit planes deep.
    fn crumb(&self, at: u32) -> String {
        let byte = self.byte(&format!(
            "(i32.add (i32.const {at}) (i32.add (i32.shl {} (i32.const 5)) {}))",
            e_shr(7),
            e_and(31)
        ));
        let plane = format!("(i32.shr_u {} (i32.const 5))", e_and(127));
        format!("(i32.and (i32.shr_u {byte} (i32.shl {plane} (i32.const 1))) (i32.const 3))")
    }

    /// Nibble `$e` of a 32-element block whose 16 bytes start at `at`: low nibbles first.
    fn nibble(&self, at: u32) -> String {
        let byte = self.byte(&format!(
            "(i32.add (i32.const {at}) (i32.and (local.get $e) (i32.const 15)))"
        ));
        format!(
            "(i32.and (i32.shr_u {byte} (i32.shl (i32.shr_u (local.get $e) (i32.const 4)) (i32.const 2))) (i32.const 15))"
        )
    }
}

/// An i32 expression `x` evaluated for the element: shorthand for WAT.
fn e_shr(bits: u32) -> String {
    format!("(i32.shr_u (local.get $e) (i32.const {bits}))")
}

fn e_and(mask: u32) -> String {
    format!("(i32.and (local.get $e) (i32.const {mask}))")
}

/// A signed IQ4 level for nibble expression `nibble`.
fn iq4_level(nibble: &str) -> String {
    let pack = |levels: &[i8]| {
        levels
            .iter()
            .rev()
            .fold(0u64, |acc, &l| acc << 8 | u64::from(l as u8)) as i64
    };
    format!(
        "(i32.extend8_s (i32.wrap_i64 (i64.shr_u (select (i64.const {hi}) (i64.const {lo}) (i32.ge_u (local.tee $q {nibble}) (i32.const 8)))
           (i64.extend_i32_u (i32.shl (i32.and (local.get $q) (i32.const 7)) (i32.const 3))))))",
        lo = pack(&IQ4_LEVELS[..8]),
        hi = pack(&IQ4_LEVELS[8..]),
    )
}

/// The per-block prelude (scales) and per-element f32 value of a block type,
/// in gguf-py's operation order.
fn block_kernel(name: &str, m: u32) -> (String, String) {
    let b = Block(m);
    let f32_of = |i32_expr: String| format!("(f32.convert_i32_s {i32_expr})");
    let set = |local: &str, expr: String| format!("(local.set {local} {expr})");
    match name {
        "Q4_0" => (
            set("$d", b.half(0)),
            format!(
                "(f32.mul (local.get $d) {})",
                f32_of(format!("(i32.sub {} (i32.const 8))", b.nibble(2)))
            ),
        ),
        "Q4_1" => (
            set("$d", b.half(0)) + &set("$dmin", b.half(2)),
            format!(
                "(f32.add (f32.mul (local.get $d) {}) (local.get $dmin))",
                f32_of(b.nibble(4))
            ),
        ),
        "Q5_0" | "Q5_1" => {
            let (qh, qs, prelude) = if name == "Q5_0" {
                (2, 6, set("$d", b.half(0)))
            } else {
                (4, 8, set("$d", b.half(0)) + &set("$dmin", b.half(2)))
            };
            let high = format!(
                "(i32.shl (i32.and (i32.shr_u (i32.load $m{m} offset={qh} (local.get $src)) (local.get $e)) (i32.const 1)) (i32.const 4))"
            );
            let q = format!("(i32.or {} {high})", b.nibble(qs));
            let value = if name == "Q5_0" {
                format!(
                    "(f32.mul (local.get $d) {})",
                    f32_of(format!("(i32.sub {q} (i32.const 16))"))
                )
            } else {
                format!(
                    "(f32.add (f32.mul (local.get $d) {}) (local.get $dmin))",
                    f32_of(q)
                )
            };
            (prelude, value)
        }
        "Q8_0" => (
            set("$d", b.half(0)),
            format!(
                "(f32.mul (f32.convert_i32_s (i32.extend8_s {})) (local.get $d))",
                b.byte("(i32.add (i32.const 2) (local.get $e))")
            ),
        ),
        "Q2_K" => {
            let scale = b.byte(&e_shr(4));
            let q = b.crumb(16);
            (
                set("$d", b.half(80)) + &set("$dmin", b.half(82)),
                format!(
                    "(f32.sub (f32.mul (f32.mul (local.get $d) {}) {}) (f32.mul (local.get $dmin) {}))",
                    f32_of(format!("(i32.and (local.tee $q {scale}) (i32.const 15))")),
                    f32_of(q),
                    f32_of("(i32.shr_u (local.get $q) (i32.const 4))".into()),
                ),
            )
        }
        "Q3_K" => {
            let i = e_shr(4);
            let low = format!(
                "(i32.and (i32.shr_u {} (i32.shl (i32.shr_u {i} (i32.const 3)) (i32.const 2))) (i32.const 15))",
                b.byte(&format!(
                    "(i32.add (i32.const 96) (i32.and {i} (i32.const 7)))"
                ))
            );
            let high = format!(
                "(i32.and (i32.shr_u {} (i32.shl (i32.shr_u {i} (i32.const 2)) (i32.const 1))) (i32.const 3))",
                b.byte(&format!(
                    "(i32.add (i32.const 104) (i32.and {i} (i32.const 3)))"
                ))
            );
            let scale =
                format!("(i32.sub (i32.or {low} (i32.shl {high} (i32.const 4))) (i32.const 32))");
            let ql = b.crumb(32);
            let qh = format!(
                "(i32.xor (i32.and (i32.shr_u {} {}) (i32.const 1)) (i32.const 1))",
                b.byte(&e_and(31)),
                e_shr(5)
            );
            (
                set("$d", b.half(108)),
                format!(
                    "(f32.mul (f32.mul (local.get $d) {}) {})",
                    f32_of(scale),
                    f32_of(format!("(i32.sub {ql} (i32.shl {qh} (i32.const 2)))"))
                ),
            )
        }
        "Q4_K" | "Q5_K" => {
            // Sub-block g = e >> 5: its 6-bit scale and min, packed in the 12 bytes at 4.
            let g = e_shr(5);
            let sb = |expr: String| b.byte(&format!("(i32.add (i32.const 4) {expr})"));
            let lt4 = format!("(i32.lt_u {g} (i32.const 4))");
            let scale = format!(
                "(select (i32.and {} (i32.const 63)) (i32.or (i32.and {} (i32.const 15)) (i32.and (i32.shr_u {} (i32.const 2)) (i32.const 48))) {lt4})",
                sb(g.clone()),
                sb(format!("(i32.add {g} (i32.const 4))")),
                sb(format!("(i32.sub {g} (i32.const 4))")),
            );
            let min = format!(
                "(select (i32.and {} (i32.const 63)) (i32.or (i32.shr_u {} (i32.const 4)) (i32.and (i32.shr_u {} (i32.const 2)) (i32.const 48))) {lt4})",
                sb(format!("(i32.add {g} (i32.const 4))")),
                sb(format!("(i32.add {g} (i32.const 4))")),
                sb(g.clone()),
            );
            let qs = if name == "Q4_K" { 16 } else { 48 };
            let mut q = format!(
                "(i32.and (i32.shr_u {} (i32.shl (i32.and {g} (i32.const 1)) (i32.const 2))) (i32.const 15))",
                b.byte(&format!("(i32.add (i32.const {qs}) (i32.add (i32.shl (i32.shr_u {g} (i32.const 1)) (i32.const 5)) {}))", e_and(31))),
            );
            if name == "Q5_K" {
                let high = format!(
                    "(i32.and (i32.shr_u {} {g}) (i32.const 1))",
                    b.byte(&format!("(i32.add (i32.const 16) {})", e_and(31)))
                );
                q = format!("(i32.or {q} (i32.shl {high} (i32.const 4)))");
            }
            (
                set("$d", b.half(0)) + &set("$dmin", b.half(2)),
                format!(
                    "(f32.sub (f32.mul (f32.mul (local.get $d) {}) {}) (f32.mul (local.get $dmin) {}))",
                    f32_of(scale),
                    f32_of(q),
                    f32_of(min)
                ),
            )
        }
        "Q6_K" => {
            let low = format!(
                "(i32.and (i32.shr_u {} (i32.shl (i32.shr_u {} (i32.const 6)) (i32.const 2))) (i32.const 15))",
                b.byte(&format!(
                    "(i32.add (i32.shl {} (i32.const 6)) {})",
                    e_shr(7),
                    e_and(63)
                )),
                e_and(127),
            );
            let high = format!(
                "(i32.and (i32.shr_u {} (i32.shl (i32.shr_u {} (i32.const 5)) (i32.const 1))) (i32.const 3))",
                b.byte(&format!(
                    "(i32.add (i32.const 128) (i32.add (i32.shl {} (i32.const 5)) {}))",
                    e_shr(7),
                    e_and(31)
                )),
                e_and(127),
            );
            let scale = format!(
                "(i32.extend8_s {})",
                b.byte(&format!("(i32.add (i32.const 192) {})", e_shr(4)))
            );
            (
                set("$d", b.half(208)),
                format!(
                    "(f32.mul (f32.mul (local.get $d) {}) {})",
                    f32_of(scale),
                    f32_of(format!(
                        "(i32.sub (i32.or {low} (i32.shl {high} (i32.const 4))) (i32.const 32))"
                    ))
                ),
            )
        }
        "IQ4_NL" => (
            set("$d", b.half(0)),
            format!(
                "(f32.mul (local.get $d) {})",
                f32_of(iq4_level(&b.nibble(2)))
            ),
        ),
        "IQ4_XS" => {
            let i = e_shr(5);
            let low = format!(
                "(i32.and (i32.shr_u {} (i32.shl (i32.and {i} (i32.const 1)) (i32.const 2))) (i32.const 15))",
                b.byte(&format!(
                    "(i32.add (i32.const 4) (i32.shr_u {i} (i32.const 1)))"
                ))
            );
            let high = format!(
                "(i32.and (i32.shr_u (i32.load16_u $m{m} offset=2 (local.get $src)) (i32.shl {i} (i32.const 1))) (i32.const 3))"
            );
            let scale =
                format!("(i32.sub (i32.or {low} (i32.shl {high} (i32.const 4))) (i32.const 32))");
            let nibble = format!(
                "(i32.and (i32.shr_u {} (i32.shl (i32.shr_u {} (i32.const 4)) (i32.const 2))) (i32.const 15))",
                b.byte(&format!(
                    "(i32.add (i32.const 8) (i32.add (i32.shl {i} (i32.const 4)) {}))",
                    e_and(15)
                )),
                e_and(31),
            );
            (
                set("$d", b.half(0)),
                format!(
                    "(f32.mul (f32.mul (local.get $d) {}) {})",
                    f32_of(scale),
                    f32_of(iq4_level(&nibble))
                ),
            )
        }
        other => unreachable!("no kernel for {other}"),
    }
}

/// The loop body of one kernel over memory `$m{m}` for one block at `$src`
/// (f32 output at `$out`).
fn block_body(name: &str, block: u64, m: u32) -> String {
    match name {
        "F16" => format!(
            "(f32.store $m0 (local.get $out) (call $f16 (i32.load16_u $m{m} (local.get $src))))"
        ),
        "BF16" => format!(
            "(i32.store $m0 (local.get $out) (i32.shl (i32.load16_u $m{m} (local.get $src)) (i32.const 16)))"
        ),
        _ => {
            let (prelude, value) = block_kernel(name, m);
            format!(
                r#"{prelude}
          (local.set $e (i32.const 0))
          (loop $elements
            (f32.store $m0 (i32.add (local.get $out) (i32.shl (local.get $e) (i32.const 2))) {value})
            (local.set $e (i32.add (local.get $e) (i32.const 1)))
            (br_if $elements (i32.lt_u (local.get $e) (i32.const {block}))))"#
            )
        }
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
    (local $d f32) (local $dmin f32) (local $e i32) (local $q i32)
    (block $done
      (loop $blocks
        (br_if $done (i64.eqz (local.get $n)))
        {body}
        (local.set $src (i64.add (local.get $src) (i64.const {size})))
        (local.set $out (i32.add (local.get $out) (i32.const {out_step})))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $blocks))))"#,
        body = block_body(name, block, m),
        out_step = block * 4,
    )
}

/// The `dequantize(tensor, first_row, rows, out)` export, its dispatchers and
/// a kernel per shard for each of `types` (gguf-py names) the guest supports,
/// plus the exact f16 -> f32 conversion. Other types trap.
pub fn dequantize_functions(shards: u32, types: &[&str]) -> String {
    let emitted: Vec<_> = DEQUANTIZE_TYPES
        .iter()
        .filter(|t| types.contains(&t.1))
        .collect();
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
    let max_id = emitted.iter().map(|t| t.0).max().unwrap_or(0);
    let _ = write!(
        wat,
        r#"
  ;; Rows [first, first + rows) of tensor $t as f32 at scratch offset $out.
  (func $dequantize (export "dequantize") (param $t i32) (param $first i64) (param $rows i64) (param $out i32)
    (local $e i32) (local $row_len i64) (local $row_bytes i64) (local $block i64) (local $size i64) (local $shard i32)
    (local.set $e (call $tensor_entry (local.get $t)))
    (local.set $row_len (i64.load $m0 offset=24 (local.get $e)))
    (local.set $shard (i32.load $m0 (local.get $e)))
    (block $unsupported
"#
    );
    for (_, name, _, _) in emitted.iter().rev() {
        let _ = writeln!(wat, "    (block $t_{name}");
    }
    let labels: String = (0..=max_id)
        .map(|id| match emitted.iter().find(|t| t.0 == id) {
            Some((_, name, _, _)) => format!("$t_{name} "),
            None => "$unsupported ".to_string(),
        })
        .collect();
    let _ = writeln!(
        wat,
        "      (br_table {labels}$unsupported (i32.load $m0 offset=4 (local.get $e))))"
    );
    for (_, name, block, size) in &emitted {
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
    for (_, name, block, size) in &emitted {
        wat += &crate::shard_dispatch(
            &format!("$dq_{name}"),
            &format!("dq_{name}"),
            &["src i64", "n i64", "out i32"],
            None,
            shards,
        );
        for k in 0..shards {
            wat += &kernel(name, *block, *size, k);
        }
    }
    wat
}
