;; Functions every weight kernel shares: f16 to f32 on four lanes, and the
;; row check of the exports that take (tensor, first_row, rows).
  ;; $f16 on four lanes of f16 bits (zero-extended to i32), the same way.
  (func $f16x4 (param $h v128) (result v128)
    (local $bits v128) (local $exponent v128)
    (local.set $bits (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (i32.const 13)))
    (local.set $exponent (v128.and (local.get $h) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
    (v128.or
      (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
      (v128.bitselect
        (v128.or (local.get $bits) (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))
        (v128.bitselect
          (f32x4.mul (f32x4.convert_i32x4_u (v128.and (local.get $h) (v128.const i32x4 0x3ff 0x3ff 0x3ff 0x3ff)))
                     (f32x4.splat (f32.const 0x1p-24)))
          (i32x4.add (local.get $bits) (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000))
          (i32x4.eq (local.get $exponent) (v128.const i64x2 0 0)))
        (i32x4.eq (local.get $exponent) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))))

  ;; Traps unless rows [first, first + rows) lie inside the tensor.
  (func $check_rows (param $e i32) (param $first i64) (param $rows i64) (param $row_bytes i64)
    (local $end i64)
    (local.set $end (i64.add (local.get $first) (local.get $rows)))
    (if (i64.lt_u (local.get $end) (local.get $first)) (then unreachable))
    (if (i64.gt_u (local.get $end) (i64.div_u (i64.load $m0 offset={TENSOR_SIZE} (local.get $e)) (local.get $row_bytes)))
      (then unreachable)))
