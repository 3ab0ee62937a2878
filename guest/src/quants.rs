//! The quantized block formats, unpacked with SIMD128: for each 32-element
//! *group* of a block, its quants as two i8x16 vectors and the scales that
//! turn them into weights. `dequantize` and `matvec` are both written over
//! this one description of each format.

use std::fmt::Write;

use shardload_gguf::GgmlType;

/// Every type the guest has kernels for; the host refuses any other by name.
/// The one list in the ggml type table's crate, shared with the native oracle.
pub use shardload_gguf::KERNEL_TYPES;

/// The body of an export `(param $t i32) (param $first i64) (param $rows i64) ...`
/// over rows of tensor `$t`: finds its entry, checks the rows lie inside it,
/// sets `$row_len`, `$row_bytes`, `$shard` and `$src` (the rows' first byte
/// in the shard), then runs `arm(type)`, which must return; a type not in
/// `types` traps.
pub(crate) fn type_dispatch(types: &[GgmlType], arm: impl Fn(GgmlType) -> String) -> String {
    let mut wat = crate::abi::fill(
        r#"
    (local $e i32) (local $row_len i64) (local $row_bytes i64) (local $shard i32) (local $src i64)
    (local.set $e (call $tensor_entry (local.get $t)))
    (local.set $row_len (i64.load $m0 offset={TENSOR_ROW_LEN} (local.get $e)))
    (local.set $shard (i32.load $m0 offset={TENSOR_SHARD} (local.get $e)))
    (block $unsupported
"#,
        &[],
    );
    for ty in types.iter().rev() {
        let _ = writeln!(wat, "    (block $t_{}", ty.name());
    }
    let max_id = types.iter().map(|t| t.id()).max().unwrap_or(0);
    let labels: String = (0..=max_id)
        .map(|id| match types.iter().find(|t| t.id() == id) {
            Some(ty) => format!("$t_{} ", ty.name()),
            None => "$unsupported ".to_string(),
        })
        .collect();
    // The br_table closes the innermost block; each arm closes the next one out.
    let _ = writeln!(
        wat,
        "      (br_table {labels}$unsupported (i32.load $m0 offset={} (local.get $e))))",
        crate::abi::TENSOR_TYPE
    );
    for &ty in types {
        let (block, size) = (ty.block_size(), ty.type_size());
        let _ = writeln!(
            wat,
            "      (local.set $row_bytes (i64.mul (i64.div_u (local.get $row_len) (i64.const {block})) (i64.const {size})))
      (call $check_rows (local.get $e) (local.get $first) (local.get $rows) (local.get $row_bytes))
      (local.set $src (i64.add (i64.load $m0 offset={offset} (local.get $e)) (i64.mul (local.get $first) (local.get $row_bytes))))
      {arm})",
            offset = crate::abi::TENSOR_OFFSET,
            arm = arm(ty)
        );
    }
    wat + "    unreachable)
"
}

/// IQ4_NL's and IQ4_XS's 16 non-linear levels.
const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// One group of a block: weight `j` is `A_h · (quant_j − offset) + B_h`, h
/// the 16-element half j lies in (gguf-py's f32 operations, in its order).
pub(crate) struct Group {
    /// Statements run first (loads into locals, shared by later groups).
    pub setup: String,
    /// i8x16 quants of elements 0..16 and 16..32.
    pub lo: String,
    pub hi: String,
    /// The range of the quants, which picks the dot product's form.
    pub quants: Quants,
    /// Subtracted from each quant (in integers) before scaling.
    pub offset: i32,
    /// `A_h`.
    pub scale: Scale,
    /// `B_h`, for types with a min.
    pub min: Option<Min>,
}

/// What a group's i8 quants can hold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quants {
    /// 0..=max (at most 127): relaxed SIMD's i7 operand as they are.
    Unsigned { max: u8 },
    /// -127..=127 in any file a quantizer wrote (Q8_0's `round(x / d)` with
    /// `d = max|x| / 127`; IQ4's level table): the dot is `|w| · (x with w's
    /// sign)`, whose unsigned operand is 0..=127. A hostile file's -128 is
    /// 128 there, which x86's unsigned-times-signed dots (`pmaddubsw`,
    /// `vpdpbusd`) still multiply exactly, without saturating.
    Signed,
}

/// A group's multiplier: one f32 for all 32 elements, or `a · s_h` with an
/// integer scale per 16-element half.
pub(crate) enum Scale {
    Whole(String),
    Halves { a: String, sa: String, sb: String },
}

/// A group's added term: one f32, or `b · m_h` with an integer min per half.
pub(crate) enum Min {
    Whole(String),
    Halves { b: String, ma: String, mb: String },
}

/// Emits a v128 constant with 16 equal bytes.
pub(crate) fn splat8(byte: u8) -> String {
    format!(
        "(v128.const i8x16 {})",
        vec![byte.to_string(); 16].join(" ")
    )
}

/// The block's scale and min, converted from f16 once per block, before any
/// vector is live: every v128 is caller-saved, so a call between groups
/// would spill them all.
pub(crate) const D: &str = "(local.get $d)";
pub(crate) const DMIN: &str = "(local.get $dmin)";

/// Where a block of `ty` keeps its f16 scale `d` (and `dmin`), in bytes.
pub(crate) fn scale_offsets(ty: &str) -> (u32, Option<u32>) {
    match ty {
        "Q6_K" => (208, None),
        "Q2_K" => (80, Some(82)),
        "Q3_K" => (108, None),
        "Q4_1" | "Q5_1" | "Q4_K" | "Q5_K" => (0, Some(2)),
        _ => (0, None),
    }
}

/// Statements that set `$d` (and `$dmin`) from a block of `ty` at `$p`
/// (using i32 locals `$half` and `$bits`).
pub(crate) fn block_scales(ty: &str, m: u32) -> String {
    let (d, dmin) = scale_offsets(ty);
    let mut code = f16_inline(
        "$d",
        &format!("(i32.load16_u $m{m} offset={d} (local.get $p))"),
    );
    if let Some(at) = dmin {
        code += &f16_inline(
            "$dmin",
            &format!("(i32.load16_u $m{m} offset={at} (local.get $p))"),
        );
    }
    code
}

/// An f32x4 expression of the four f16 bit patterns in the low halves of
/// the i32x4 local `half`, with [`f16_inline`]'s results: the magnitude's
/// bits moved to f32's positions and scaled by 2^112, which rebiases the
/// exponent of normal values and turns subnormal ones into the normal f32
/// they stand for (exact: a power of two), infinities and NaNs (payloads
/// kept) set apart, then the sign. Ten operations for four scales; only a
/// subnormal f16 scale (none in real models) makes the multiply slow.
pub(crate) fn f16x4(half: &str) -> String {
    let h = format!("(local.get {half})");
    let bits =
        format!("(i32x4.shl (v128.and {h} (i32x4.splat (i32.const 0x7fff))) (i32.const 13))");
    format!(
        "(v128.or
          (i32x4.shl (v128.and {h} (i32x4.splat (i32.const 0x8000))) (i32.const 16))
          (v128.bitselect
            (v128.or {bits} (i32x4.splat (i32.const 0x7f800000)))
            (f32x4.mul {bits} (f32x4.splat (f32.const 0x1p112)))
            (i32x4.eq (v128.and {h} (i32x4.splat (i32.const 0x7c00))) (i32x4.splat (i32.const 0x7c00)))))"
    )
}

/// Statements that set f32 local `target` to the f16 bits `half`, exactly as
/// numpy converts them (NaN payloads kept): normal values rebiased in
/// integers, subnormal ones scaled from their mantissa, so no float
/// operation sees a subnormal operand (those can cost a hundred cycles).
/// Uses i32 locals `$half` and `$bits`.
pub(crate) fn f16_inline(target: &str, half: &str) -> String {
    format!(
        "
        (local.set $half {half})
        (local.set $bits (i32.shl (i32.and (local.get $half) (i32.const 0x7fff)) (i32.const 13)))
        (local.set {target} (f32.reinterpret_i32 (i32.or
          (i32.shl (i32.and (local.get $half) (i32.const 0x8000)) (i32.const 16))
          (if (result i32) (i32.and
                (i32.ne (i32.and (local.get $half) (i32.const 0x7c00)) (i32.const 0))
                (i32.ne (i32.and (local.get $half) (i32.const 0x7c00)) (i32.const 0x7c00)))
            (then (i32.add (local.get $bits) (i32.const 0x38000000)))
            (else (select
              (i32.or (local.get $bits) (i32.const 0x7f800000))
              (i32.reinterpret_f32 (f32.mul (f32.convert_i32_u (i32.and (local.get $half) (i32.const 0x3ff))) (f32.const 0x1p-24)))
              (i32.and (local.get $half) (i32.const 0x7c00))))))))"
    )
}

fn byte(m: u32, at: u32) -> String {
    format!("(i32.load8_u $m{m} offset={at} (local.get $p))")
}

/// Statements loading the 32 bytes at `at` into v128 locals `first` and `second`.
fn load_pair(m: u32, at: u32, first: &str, second: &str) -> String {
    format!(
        "(local.set {first} {}) (local.set {second} {})",
        load(m, at),
        load(m, at + 16)
    )
}

fn load(m: u32, at: u32) -> String {
    format!("(v128.load $m{m} offset={at} (local.get $p))")
}

/// Byte lanes of `v` shifted so bit `from` lands on bit `to`, masked to bit `to`.
fn move_bit(v: &str, from: u32, to: u32) -> String {
    let shifted = match from.cmp(&to) {
        std::cmp::Ordering::Less => format!("(i8x16.shl {v} (i32.const {}))", to - from),
        std::cmp::Ordering::Greater => format!("(i8x16.shr_u {v} (i32.const {}))", from - to),
        std::cmp::Ordering::Equal => v.to_string(),
    };
    format!("(v128.and {shifted} {})", splat8(1 << to))
}

/// Low (`high = false`) or high nibbles of the byte lanes of `v`.
fn nibble(v: &str, high: bool) -> String {
    if high {
        format!("(i8x16.shr_u {v} (i32.const 4))")
    } else {
        format!("(v128.and {v} {})", splat8(0x0F))
    }
}

/// Bit 4 of each lane set where the lane's bit of the 32-bit mask `qh` is set,
/// for lanes `first..first + 16` (Q5_0, Q5_1).
fn fifth_bits(first: u32) -> String {
    let byte = first / 8;
    let indices: Vec<String> = (0..16).map(|j| (byte + j / 8).to_string()).collect();
    let bits: Vec<String> = (0..16).map(|j| (1u32 << (j % 8)).to_string()).collect();
    format!(
        "(v128.and (i8x16.ne (v128.and (i8x16.swizzle (local.get $qh) (v128.const i8x16 {})) (v128.const i8x16 {})) (v128.const i64x2 0 0)) {})",
        indices.join(" "),
        bits.join(" "),
        splat8(0x10)
    )
}

/// IQ4's 16 levels as a v128 constant, for `i8x16.swizzle`.
fn iq4_table() -> String {
    let levels: Vec<String> = IQ4_LEVELS.iter().map(i8::to_string).collect();
    format!("(v128.const i8x16 {})", levels.join(" "))
}

/// Group `g` of a block of `ty` at `$p` in memory `$m{m}`.
pub(crate) fn group(ty: &str, m: u32, g: u32) -> Group {
    match ty {
        "Q4_0" | "Q4_1" => {
            let at = if ty == "Q4_0" { 2 } else { 4 };
            Group {
                setup: format!("(local.set $w1 {})", load(m, at)),
                lo: nibble("(local.get $w1)", false),
                hi: nibble("(local.get $w1)", true),
                quants: Quants::Unsigned { max: 15 },
                offset: if ty == "Q4_0" { 8 } else { 0 },
                scale: Scale::Whole(D.into()),
                min: (ty == "Q4_1").then(|| Min::Whole(DMIN.into())),
            }
        }
        "Q5_0" | "Q5_1" => {
            let at = if ty == "Q5_0" { 2 } else { 4 };
            Group {
                setup: format!(
                    "(local.set $qh (i32x4.splat (i32.load $m{m} offset={at} (local.get $p)))) (local.set $w1 {})",
                    load(m, at + 4)
                ),
                lo: format!(
                    "(v128.or {} {})",
                    nibble("(local.get $w1)", false),
                    fifth_bits(0)
                ),
                hi: format!(
                    "(v128.or {} {})",
                    nibble("(local.get $w1)", true),
                    fifth_bits(16)
                ),
                quants: Quants::Unsigned { max: 31 },
                offset: if ty == "Q5_0" { 16 } else { 0 },
                scale: Scale::Whole(D.into()),
                min: (ty == "Q5_1").then(|| Min::Whole(DMIN.into())),
            }
        }
        "Q8_0" => Group {
            setup: String::new(),
            lo: load(m, 2),
            hi: load(m, 18),
            quants: Quants::Signed,
            offset: 0,
            scale: Scale::Whole(D.into()),
            min: None,
        },
        "IQ4_NL" | "IQ4_XS" => {
            let (qs, scale) = if ty == "IQ4_NL" {
                (2, D.to_string())
            } else {
                // IQ4_XS: group g's 6-bit scale, low 4 bits at 4, high 2 at 2.
                let low = format!(
                    "(i32.and (i32.shr_u {} (i32.const {})) (i32.const 15))",
                    byte(m, 4 + g / 2),
                    4 * (g % 2)
                );
                let high = format!(
                    "(i32.and (i32.shr_u (i32.load16_u $m{m} offset=2 (local.get $p)) (i32.const {})) (i32.const 3))",
                    2 * g
                );
                (
                    8 + 16 * g,
                    format!(
                        "(f32.mul {D} (f32.convert_i32_s (i32.sub (i32.or {low} (i32.shl {high} (i32.const 4))) (i32.const 32))))"
                    ),
                )
            };
            let level = |high| {
                format!(
                    "(i8x16.swizzle {} {})",
                    iq4_table(),
                    nibble("(local.get $w1)", high)
                )
            };
            Group {
                setup: format!("(local.set $w1 {})", load(m, qs)),
                lo: level(false),
                hi: level(true),
                quants: Quants::Signed,
                offset: 0,
                scale: Scale::Whole(scale),
                min: None,
            }
        }
        "Q4_K" | "Q5_K" => {
            // The 6-bit scale and min of group g, packed in the 12 bytes at 4.
            let (scale, min) = if g < 4 {
                (
                    format!("(i32.and {} (i32.const 63))", byte(m, 4 + g)),
                    format!("(i32.and {} (i32.const 63))", byte(m, 8 + g)),
                )
            } else {
                let packed = byte(m, 12 + g - 4);
                (
                    format!(
                        "(i32.or (i32.and {packed} (i32.const 15)) (i32.shl (i32.shr_u {} (i32.const 6)) (i32.const 4)))",
                        byte(m, g)
                    ),
                    format!(
                        "(i32.or (i32.shr_u {packed} (i32.const 4)) (i32.shl (i32.shr_u {} (i32.const 6)) (i32.const 4)))",
                        byte(m, 4 + g)
                    ),
                )
            };
            let qs = if ty == "Q4_K" { 16 } else { 48 } + 32 * (g / 2);
            let mut setup = String::new();
            if g.is_multiple_of(2) {
                setup += &load_pair(m, qs, "$w1", "$w2");
            }
            let (mut lo, mut hi) = (
                nibble("(local.get $w1)", g % 2 == 1),
                nibble("(local.get $w2)", g % 2 == 1),
            );
            if ty == "Q5_K" {
                if g == 0 {
                    setup += &load_pair(m, 16, "$h1", "$h2");
                }
                lo = format!("(v128.or {lo} {})", move_bit("(local.get $h1)", g, 4));
                hi = format!("(v128.or {hi} {})", move_bit("(local.get $h2)", g, 4));
            }
            Group {
                setup,
                lo,
                hi,
                quants: Quants::Unsigned {
                    max: if ty == "Q4_K" { 15 } else { 31 },
                },
                offset: 0,
                scale: Scale::Whole(format!("(f32.mul {D} (f32.convert_i32_s {scale}))")),
                min: Some(Min::Whole(format!(
                    "(f32.neg (f32.mul {DMIN} (f32.convert_i32_s {min})))"
                ))),
            }
        }
        "Q6_K" => {
            let (h, s) = (g / 4, g % 4);
            let ql = h * 64 + 32 * (s % 2);
            // Groups s and s + 2 share their low-nibble bytes: loaded once, at s < 2.
            let (v1, v2) = if s % 2 == 0 {
                ("$w1", "$w2")
            } else {
                ("$w3", "$w4")
            };
            let mut setup = String::new();
            if s < 2 {
                setup += &load_pair(m, ql, v1, v2);
            }
            if s == 0 {
                setup += &load_pair(m, 128 + 32 * h, "$h1", "$h2");
            }
            let high = |v: &str| {
                let shifted = match 2 * s {
                    0 => format!("(i8x16.shl (local.get {v}) (i32.const 4))"),
                    2 => format!("(i8x16.shl (local.get {v}) (i32.const 2))"),
                    4 => format!("(local.get {v})"),
                    _ => format!("(i8x16.shr_u (local.get {v}) (i32.const 2))"),
                };
                format!("(v128.and {shifted} {})", splat8(0x30))
            };
            Group {
                setup,
                lo: format!(
                    "(v128.or {} {})",
                    nibble(&format!("(local.get {v1})"), s >= 2),
                    high("$h1")
                ),
                hi: format!(
                    "(v128.or {} {})",
                    nibble(&format!("(local.get {v2})"), s >= 2),
                    high("$h2")
                ),
                quants: Quants::Unsigned { max: 63 },
                offset: 32,
                scale: Scale::Halves {
                    a: D.into(),
                    sa: format!("(i32.load8_s $m{m} offset={} (local.get $p))", 192 + 2 * g),
                    sb: format!("(i32.load8_s $m{m} offset={} (local.get $p))", 193 + 2 * g),
                },
                min: None,
            }
        }
        "Q2_K" => {
            let (h, s) = (g / 4, g % 4);
            let mut setup = String::new();
            if s == 0 {
                setup += &load_pair(m, 16 + 32 * h, "$w1", "$w2");
            }
            let crumb = |v: &str| {
                format!(
                    "(v128.and (i8x16.shr_u (local.get {v}) (i32.const {})) {})",
                    2 * s,
                    splat8(3)
                )
            };
            let (sa, sb) = (byte(m, 2 * g), byte(m, 2 * g + 1));
            Group {
                setup,
                lo: crumb("$w1"),
                hi: crumb("$w2"),
                quants: Quants::Unsigned { max: 3 },
                offset: 0,
                scale: Scale::Halves {
                    a: D.into(),
                    sa: format!("(i32.and {sa} (i32.const 15))"),
                    sb: format!("(i32.and {sb} (i32.const 15))"),
                },
                min: Some(Min::Halves {
                    b: format!("(f32.neg {DMIN})"),
                    ma: format!("(i32.shr_u {sa} (i32.const 4))"),
                    mb: format!("(i32.shr_u {sb} (i32.const 4))"),
                }),
            }
        }
        "Q3_K" => {
            let (h, s) = (g / 4, g % 4);
            let mut setup = String::new();
            if s == 0 {
                setup += &load_pair(m, 32 + 32 * h, "$w1", "$w2");
            }
            if g == 0 {
                setup += &load_pair(m, 0, "$h1", "$h2");
            }
            let quant = |v: &str, hv: &str| {
                format!(
                    "(v128.or (v128.and (i8x16.shr_u (local.get {v}) (i32.const {})) {}) {})",
                    2 * s,
                    splat8(3),
                    move_bit(&format!("(local.get {hv})"), g, 2)
                )
            };
            let scale = |i: u32| {
                format!(
                    "(i32.sub (i32.or (i32.and (i32.shr_u {} (i32.const {})) (i32.const 15))
                                      (i32.shl (i32.and (i32.shr_u {} (i32.const {})) (i32.const 3)) (i32.const 4))) (i32.const 32))",
                    byte(m, 96 + i % 8),
                    4 * (i / 8),
                    byte(m, 104 + i % 4),
                    2 * (i / 4)
                )
            };
            Group {
                setup,
                lo: quant("$w1", "$h1"),
                hi: quant("$w2", "$h2"),
                quants: Quants::Unsigned { max: 7 },
                offset: 4,
                scale: Scale::Halves {
                    a: D.into(),
                    sa: scale(2 * g),
                    sb: scale(2 * g + 1),
                },
                min: None,
            }
        }
        other => unreachable!("no quantized kernel for {other}"),
    }
}
