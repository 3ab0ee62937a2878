;; matvec's shard-independent parts (the per-type row loops are generated in
;; src/matvec.rs): x quantized to Q8_0 as gguf-py does it, and the exact f32
;; path for float types.
;;
;; $quantize_x(x, n, q, g): the n f32 at x (n a multiple of 32) to Q8_0 as
;; gguf-py does (d = max|x| / 127, q = roundf(x * (1 / d)), d kept as its f16
;; rounding), quants at q, per-group metadata at g (16 bytes a group: d as f32,
;; the quant sums of elements 0..16 and 16..32, their sum).
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

;; Float types: each row dequantized exactly into tmp, then dotted with x
;; itself by four f32x4 accumulators (|y - exact| <= n 2^-24 sum |w x|).
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
