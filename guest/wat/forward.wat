;; The transformer's operations besides matmul, over f32 activations in
;; scratch (memory 0): what the program interpreter (program.wat) calls for
;; each operation of a forward pass. Weights they need (norm weights, RoPE frequency factors) are
;; read in place from the shards through $f32_weights (generated per shard).
;; Every operation follows llama.cpp's CPU order of f32 operations where it
;; matters for agreement (see guest/README.md, "The forward pass").
;; Placeholders in braces are abi::WAT_CONSTANTS.

  ;; The F32 tensor $t's shard and first byte, trapping unless it is F32 and
  ;; holds at least $n elements.
  (func $f32_tensor (param $t i32) (param $n i32) (result i32 i64)
    (local $e i32)
    (local.set $e (call $tensor_entry (local.get $t)))
    (if (i32.ne (i32.load $m0 offset={TENSOR_TYPE} (local.get $e)) (i32.const 0)) (then unreachable))
    (if (i64.lt_u (i64.load $m0 offset={TENSOR_SIZE} (local.get $e)) (i64.shl (i64.extend_i32_u (local.get $n)) (i64.const 2)))
      (then unreachable))
    (i32.load $m0 offset={TENSOR_SHARD} (local.get $e))
    (i64.load $m0 offset={TENSOR_OFFSET} (local.get $e)))

  ;; RMSNorm of $rows rows of $n f32 at $x into $out, times the F32 weight
  ;; tensor $w: y = (x * (1 / sqrt(mean(x^2) + eps))) * w, the sum of squares
  ;; in f64 as ggml does. $n a multiple of 4; $out may be $x.
  (func $rms_norm (param $x i32) (param $rows i32) (param $n i32) (param $eps f32) (param $w i32) (param $out i32)
    (local $i i32) (local $sum f64) (local $scale f32) (local $v f32) (local $shard i32) (local $p i64)
    (if (i32.and (local.get $n) (i32.const 3)) (then unreachable))
    (call $f32_tensor (local.get $w) (local.get $n))
    (local.set $p) (local.set $shard)
    (block $done
      (loop $each_row
        (br_if $done (i32.eqz (local.get $rows)))
        (local.set $sum (f64.const 0))
        (local.set $i (i32.const 0))
        (loop $squares
          (local.set $v (f32.load $m0 (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))))
          (local.set $sum (f64.add (local.get $sum) (f64.promote_f32 (f32.mul (local.get $v) (local.get $v)))))
          (br_if $squares (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
        (local.set $scale (f32.div (f32.const 1)
          (f32.sqrt (f32.add (f32.demote_f64 (f64.div (local.get $sum) (f64.convert_i32_u (local.get $n)))) (local.get $eps)))))
        (local.set $i (i32.const 0))
        (loop $scaled
          (v128.store $m0 (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 2)))
            (f32x4.mul (v128.load $m0 (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))) (f32x4.splat (local.get $scale))))
          (br_if $scaled (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 4))) (local.get $n))))
        (call $f32_weights (local.get $shard) (local.get $p) (local.get $out) (local.get $n))
        (local.set $x (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
        (local.set $out (i32.add (local.get $out) (i32.shl (local.get $n) (i32.const 2))))
        (local.set $rows (i32.sub (local.get $rows) (i32.const 1)))
        (br $each_row))))

  ;; Rotary position embedding, in place, of $tokens rows of $heads heads of
  ;; $head_dim f32 at $x, token b at position $pos0 + b. Pairs are adjacent
  ;; elements (llama's "normal" mode) or split halves ($neox). As ggml does:
  ;; theta starts at the position and is multiplied (in f32) by
  ;; base^(-2/head_dim) from pair to pair; divided by factor i of the F32
  ;; tensor $factors when $factors >= 0 (Llama 3's long-context frequencies).
  (func $rope (param $x i32) (param $tokens i32) (param $heads i32) (param $head_dim i32) (param $pos0 i32) (param $base f32) (param $neox i32) (param $factors i32)
    (local $theta_scale f32) (local $theta f32) (local $angle f64) (local $c f32) (local $s f32)
    (local $b i32) (local $h i32) (local $i i32) (local $half i32) (local $row i32) (local $a i32) (local $z i32)
    (local $x0 f32) (local $x1 f32) (local $fshard i32) (local $fp i64)
    (local.set $half (i32.shr_u (local.get $head_dim) (i32.const 1)))
    (local.set $theta_scale (f32.demote_f64 (call $exp (f64.mul
      (call $ln (f64.promote_f32 (local.get $base)))
      (f64.div (f64.const -2) (f64.convert_i32_u (local.get $head_dim)))))))
    (if (i32.ge_s (local.get $factors) (i32.const 0))
      (then
        (call $f32_tensor (local.get $factors) (local.get $half))
        (local.set $fp) (local.set $fshard)))
    (block $tokens_done
      (loop $each_token
        (br_if $tokens_done (i32.ge_u (local.get $b) (local.get $tokens)))
        (local.set $theta (f32.convert_i32_u (i32.add (local.get $pos0) (local.get $b))))
        (local.set $i (i32.const 0))
        (block $pairs_done
          (loop $each_pair
            (br_if $pairs_done (i32.ge_u (local.get $i) (local.get $half)))
            (local.set $angle (f64.promote_f32 (local.get $theta)))
            (if (i32.ge_s (local.get $factors) (i32.const 0))
              (then (local.set $angle (f64.promote_f32 (f32.div (local.get $theta)
                (call $f32_at (local.get $fshard) (i64.add (local.get $fp) (i64.extend_i32_u (i32.shl (local.get $i) (i32.const 2))))))))))
            (local.set $c (f32.demote_f64 (call $cos (local.get $angle))))
            (local.set $s (f32.demote_f64 (call $sin (local.get $angle))))
            (local.set $h (i32.const 0))
            (loop $each_head
              (local.set $row (i32.add (local.get $x) (i32.shl
                (i32.mul (i32.add (i32.mul (local.get $b) (local.get $heads)) (local.get $h)) (local.get $head_dim)) (i32.const 2))))
              (if (local.get $neox)
                (then
                  (local.set $a (i32.add (local.get $row) (i32.shl (local.get $i) (i32.const 2))))
                  (local.set $z (i32.add (local.get $a) (i32.shl (local.get $half) (i32.const 2)))))
                (else
                  (local.set $a (i32.add (local.get $row) (i32.shl (local.get $i) (i32.const 3))))
                  (local.set $z (i32.add (local.get $a) (i32.const 4)))))
              (local.set $x0 (f32.load $m0 (local.get $a)))
              (local.set $x1 (f32.load $m0 (local.get $z)))
              (f32.store $m0 (local.get $a) (f32.sub (f32.mul (local.get $x0) (local.get $c)) (f32.mul (local.get $x1) (local.get $s))))
              (f32.store $m0 (local.get $z) (f32.add (f32.mul (local.get $x0) (local.get $s)) (f32.mul (local.get $x1) (local.get $c))))
              (br_if $each_head (i32.lt_u (local.tee $h (i32.add (local.get $h) (i32.const 1))) (local.get $heads))))
            (local.set $theta (f32.mul (local.get $theta) (local.get $theta_scale)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $each_pair)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (br $each_token))))

  ;; Appends $tokens rows of $width f32 keys and values at $k and $v to the
  ;; layer's f16 caches (rows of $width) at positions $pos0.. (ggml's f16
  ;; rounding, as llama.cpp's default F16 KV cache stores them).
  (func $store_kv (param $k i32) (param $v i32) (param $tokens i32) (param $width i32) (param $k_cache i32) (param $v_cache i32) (param $pos0 i32)
    (local $i i32) (local $n i32) (local $at i32)
    (local.set $n (i32.mul (local.get $tokens) (local.get $width)))
    (local.set $at (i32.shl (i32.mul (local.get $pos0) (local.get $width)) (i32.const 1)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store16 $m0 (i32.add (local.get $k_cache) (i32.add (local.get $at) (i32.shl (local.get $i) (i32.const 1))))
          (call $f32_to_f16 (f32.load $m0 (i32.add (local.get $k) (i32.shl (local.get $i) (i32.const 2))))))
        (i32.store16 $m0 (i32.add (local.get $v_cache) (i32.add (local.get $at) (i32.shl (local.get $i) (i32.const 1))))
          (call $f32_to_f16 (f32.load $m0 (i32.add (local.get $v) (i32.shl (local.get $i) (i32.const 2))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each))))

  ;; Causal grouped-query attention for one token at position $pos: its
  ;; $heads query heads of $head_dim at $q, over its sequence's f16 K and V
  ;; caches (rows of $kv_heads * $head_dim; position t in row t mod
  ;; $capacity, so a sliding-window layer keeps a ring). Query head h reads
  ;; KV head h / ($heads / $kv_heads). With $window > 0 the token sees only
  ;; the last $window positions (sliding-window layers).
  ;; scores = q.k * $scale; softmax (max subtracted, exp in f64); out = sum p v.
  ;; Only query heads [$h0, $h1) are computed, so threads can share the heads
  ;; out. The heads of [$h0, $h1) that read one KV head are done together:
  ;; each cached K and V row is converted from f16 once for all of them (the
  ;; conversion costs more than the arithmetic), and each head's own
  ;; operations, in their order, are those of one head alone. $scores holds
  ;; (heads / kv_heads) x ($pos + 1) f32 scores, then $head_dim f32 for
  ;; the converted row and one f32 per head.
  (func $attention (param $q i32) (param $pos i32) (param $heads i32) (param $kv_heads i32) (param $head_dim i32)
        (param $k_cache i32) (param $v_cache i32) (param $scale f32) (param $window i32) (param $capacity i32)
        (param $scores i32) (param $out i32) (param $h0 i32) (param $h1 i32)
    (local $h i32) (local $first i32) (local $t i32) (local $r i32) (local $d i32) (local $group i32)
    (local $kv_width i32) (local $stride i32) (local $row i32) (local $inv_at i32)
    (local $end i32) (local $j i32) (local $count i32) (local $kv_at i32) (local $qrow i32) (local $srow i32)
    (local $dot f32) (local $max f32) (local $sum f64) (local $e f32)
    (local.set $group (i32.div_u (local.get $heads) (local.get $kv_heads)))
    (local.set $kv_width (i32.mul (local.get $kv_heads) (local.get $head_dim)))
    ;; One score row per head of a group, positions 0..$pos.
    (local.set $stride (i32.shl (i32.add (local.get $pos) (i32.const 1)) (i32.const 2)))
    (local.set $row (i32.add (local.get $scores) (i32.mul (local.get $group) (local.get $stride))))
    (local.set $inv_at (i32.add (local.get $row) (i32.shl (local.get $head_dim) (i32.const 2))))
    (if (i32.and (i32.gt_s (local.get $window) (i32.const 0)) (i32.ge_u (local.get $pos) (local.get $window)))
      (then (local.set $first (i32.add (i32.sub (local.get $pos) (local.get $window)) (i32.const 1)))))
    (local.set $h (local.get $h0))
    (block $heads_done
    (loop $each_group
      (br_if $heads_done (i32.ge_u (local.get $h) (local.get $h1)))
      ;; Heads [$h, $end) read KV head $h / $group, at $kv_at in each cache row.
      (local.set $end (i32.mul (i32.add (i32.div_u (local.get $h) (local.get $group)) (i32.const 1)) (local.get $group)))
      (if (i32.gt_u (local.get $end) (local.get $h1)) (then (local.set $end (local.get $h1))))
      (local.set $count (i32.sub (local.get $end) (local.get $h)))
      (local.set $kv_at (i32.shl (i32.mul (i32.div_u (local.get $h) (local.get $group)) (local.get $head_dim)) (i32.const 1)))
      (local.set $qrow (i32.add (local.get $q) (i32.shl (i32.mul (local.get $h) (local.get $head_dim)) (i32.const 2))))
      ;; Scores: each K row converted once, dotted with every head's query.
      (local.set $t (local.get $first))
      (local.set $r (i32.rem_u (local.get $first) (local.get $capacity)))
      (loop $each_key
        (call $f16_row_to_f32 (i32.add (local.get $k_cache) (i32.add (local.get $kv_at) (i32.shl (i32.mul (local.get $r) (local.get $kv_width)) (i32.const 1))))
          (local.get $row) (local.get $head_dim))
        (local.set $j (i32.const 0))
        (loop $each_head
          (f32.store $m0 (i32.add (i32.add (local.get $scores) (i32.mul (local.get $j) (local.get $stride))) (i32.shl (local.get $t) (i32.const 2)))
            (f32.mul (call $dot_f32 (i32.add (local.get $qrow) (i32.shl (i32.mul (local.get $j) (local.get $head_dim)) (i32.const 2)))
              (local.get $row) (local.get $head_dim)) (local.get $scale)))
          (br_if $each_head (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $count))))
        (if (i32.eq (local.tee $r (i32.add (local.get $r) (i32.const 1))) (local.get $capacity)) (then (local.set $r (i32.const 0))))
        (br_if $each_key (i32.le_u (local.tee $t (i32.add (local.get $t) (i32.const 1))) (local.get $pos))))
      ;; Per head: the maximum, exp(score - max) summed in f64 as ggml's
      ;; softmax sums, 1 / sum kept for the values, and the output zeroed.
      (local.set $j (i32.const 0))
      (loop $each_softmax
        (local.set $srow (i32.add (local.get $scores) (i32.mul (local.get $j) (local.get $stride))))
        (local.set $max (f32.const -inf))
        (local.set $t (local.get $first))
        (loop $each_max
          (local.set $max (f32.max (local.get $max) (f32.load $m0 (i32.add (local.get $srow) (i32.shl (local.get $t) (i32.const 2))))))
          (br_if $each_max (i32.le_u (local.tee $t (i32.add (local.get $t) (i32.const 1))) (local.get $pos))))
        (local.set $sum (f64.const 0))
        (local.set $t (local.get $first))
        (loop $each_exp
          (local.set $e (f32.demote_f64 (call $exp (f64.promote_f32 (f32.sub
            (f32.load $m0 (i32.add (local.get $srow) (i32.shl (local.get $t) (i32.const 2)))) (local.get $max))))))
          (f32.store $m0 (i32.add (local.get $srow) (i32.shl (local.get $t) (i32.const 2))) (local.get $e))
          (local.set $sum (f64.add (local.get $sum) (f64.promote_f32 (local.get $e))))
          (br_if $each_exp (i32.le_u (local.tee $t (i32.add (local.get $t) (i32.const 1))) (local.get $pos))))
        (f32.store $m0 (i32.add (local.get $inv_at) (i32.shl (local.get $j) (i32.const 2)))
          (f32.demote_f64 (f64.div (f64.const 1) (local.get $sum))))
        (local.set $d (i32.const 0))
        (loop $zero
          (v128.store $m0 (i32.add (i32.add (local.get $out) (i32.sub (local.get $qrow) (local.get $q)))
            (i32.shl (i32.add (i32.mul (local.get $j) (local.get $head_dim)) (local.get $d)) (i32.const 2))) (v128.const i64x2 0 0))
          (br_if $zero (i32.lt_u (local.tee $d (i32.add (local.get $d) (i32.const 4))) (local.get $head_dim))))
        (br_if $each_softmax (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $count))))
      ;; out += p v: each V row converted once, added into every head's output.
      (local.set $t (local.get $first))
      (local.set $r (i32.rem_u (local.get $first) (local.get $capacity)))
      (loop $each_value
        (call $f16_row_to_f32 (i32.add (local.get $v_cache) (i32.add (local.get $kv_at) (i32.shl (i32.mul (local.get $r) (local.get $kv_width)) (i32.const 1))))
          (local.get $row) (local.get $head_dim))
        (local.set $j (i32.const 0))
        (loop $each_head_value
          (call $axpy_f32
            (i32.add (i32.add (local.get $out) (i32.sub (local.get $qrow) (local.get $q))) (i32.shl (i32.mul (local.get $j) (local.get $head_dim)) (i32.const 2)))
            (f32.mul (f32.load $m0 (i32.add (i32.add (local.get $scores) (i32.mul (local.get $j) (local.get $stride))) (i32.shl (local.get $t) (i32.const 2))))
                     (f32.load $m0 (i32.add (local.get $inv_at) (i32.shl (local.get $j) (i32.const 2)))))
            (local.get $row) (local.get $head_dim))
          (br_if $each_head_value (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $count))))
        (if (i32.eq (local.tee $r (i32.add (local.get $r) (i32.const 1))) (local.get $capacity)) (then (local.set $r (i32.const 0))))
        (br_if $each_value (i32.le_u (local.tee $t (i32.add (local.get $t) (i32.const 1))) (local.get $pos))))
      (local.set $h (local.get $end))
      (br $each_group)))
  )

  ;; f32 copies of $n f16 at $src, written at $dst ($n a multiple of 4):
  ;; exact, NaN payloads kept.
  (func $f16_row_to_f32 (param $src i32) (param $dst i32) (param $n i32)
    (local $i i32) (local $h v128) (local $cb v128) (local $ce v128)
    (loop $each
      (local.set $h (i32x4.extend_low_i16x8_u (v128.load64_zero $m0 (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 1))))))
      (v128.store $m0 (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 2)))
        (v128.or
          (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
          (v128.bitselect
            (v128.or (local.tee $cb (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (i32.const 13)))
                     (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))
            (v128.bitselect
              (f32x4.mul (f32x4.convert_i32x4_u (v128.and (local.get $h) (v128.const i32x4 0x3ff 0x3ff 0x3ff 0x3ff)))
                         (f32x4.splat (f32.const 0x1p-24)))
              (i32x4.add (local.get $cb) (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000))
              (i32x4.eq (local.tee $ce (v128.and (local.get $h) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))) (v128.const i64x2 0 0)))
            (i32x4.eq (local.get $ce) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))))
      (br_if $each (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 4))) (local.get $n)))))

  ;; sum_i a[i] * b[i] over $n f32 ($n a multiple of 4): four lanes, then
  ;; (lane 0 + lane 1) + (lane 2 + lane 3).
  (func $dot_f32 (param $a i32) (param $b i32) (param $n i32) (result f32)
    (local $acc v128) (local $i i32)
    (loop $each
      (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul
        (v128.load $m0 (i32.add (local.get $a) (i32.shl (local.get $i) (i32.const 2))))
        (v128.load $m0 (i32.add (local.get $b) (i32.shl (local.get $i) (i32.const 2)))))))
      (br_if $each (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 4))) (local.get $n))))
    (f32.add
      (f32.add (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
      (f32.add (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc)))))

  ;; y[i] += a * x[i] over $n f32 ($n a multiple of 4).
  (func $axpy_f32 (param $y i32) (param $a f32) (param $x i32) (param $n i32)
    (local $i i32) (local $at i32) (local $s v128)
    (local.set $s (f32x4.splat (local.get $a)))
    (loop $each
      (local.set $at (i32.add (local.get $y) (i32.shl (local.get $i) (i32.const 2))))
      (v128.store $m0 (local.get $at) (f32x4.add (v128.load $m0 (local.get $at))
        (f32x4.mul (local.get $s) (v128.load $m0 (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))))))
      (br_if $each (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 4))) (local.get $n)))))

  ;; SwiGLU: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, $n f32.
  (func $silu_mul (param $gate i32) (param $up i32) (param $n i32) (param $out i32)
    (local $i i32) (local $g f32) (local $at i32)
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $at (i32.shl (local.get $i) (i32.const 2)))
        (local.set $g (f32.load $m0 (i32.add (local.get $gate) (local.get $at))))
        (f32.store $m0 (i32.add (local.get $out) (local.get $at)) (f32.mul
          (f32.div (local.get $g) (f32.add (f32.const 1) (f32.demote_f64 (call $exp (f64.promote_f32 (f32.neg (local.get $g)))))))
          (f32.load $m0 (i32.add (local.get $up) (local.get $at)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each))))

  ;; out = a + b over $n f32 ($n a multiple of 4): the residual connections.
  (func $add (param $a i32) (param $b i32) (param $n i32) (param $out i32)
    (local $i i32) (local $at i32)
    (if (i32.and (local.get $n) (i32.const 3)) (then unreachable))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $at (i32.shl (local.get $i) (i32.const 2)))
        (v128.store $m0 (i32.add (local.get $out) (local.get $at))
          (f32x4.add (v128.load $m0 (i32.add (local.get $a) (local.get $at))) (v128.load $m0 (i32.add (local.get $b) (local.get $at)))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $each))))

  ;; x *= s over $n f32 ($n a multiple of 4): Gemma's embedding scale.
  (func $scale (param $x i32) (param $n i32) (param $s f32)
    (local $i i32) (local $at i32)
    (if (i32.and (local.get $n) (i32.const 3)) (then unreachable))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $at (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2))))
        (v128.store $m0 (local.get $at) (f32x4.mul (v128.load $m0 (local.get $at)) (f32x4.splat (local.get $s))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $each))))

  ;; GEGLU: out = gelu(gate) * up, $n f32, as ggml's CPU backend computes it:
  ;; gelu through its f16 table (the input rounded to f16, the tanh
  ;; approximation 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))) in f32,
  ;; the result rounded to f16), 0 below -10 and x above 10.
  (func $gelu_mul (param $gate i32) (param $up i32) (param $n i32) (param $out i32)
    (local $i i32) (local $x f32) (local $g f32) (local $z f64) (local $t f64) (local $at i32)
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $at (i32.shl (local.get $i) (i32.const 2)))
        (local.set $x (f32.load $m0 (i32.add (local.get $gate) (local.get $at))))
        (if (f32.le (local.get $x) (f32.const -10))
          (then (local.set $g (f32.const 0)))
          (else (if (f32.ge (local.get $x) (f32.const 10))
            (then (local.set $g (local.get $x)))
            (else
              (local.set $x (call $f16 (call $f32_to_f16 (local.get $x))))
              (local.set $z (f64.promote_f32 (f32.mul (f32.mul (f32.const 0.7978845608) (local.get $x))
                (f32.add (f32.const 1) (f32.mul (f32.mul (f32.const 0.044715) (local.get $x)) (local.get $x))))))
              ;; tanh(z) = sign(z) (1 - e^(-2|z|)) / (1 + e^(-2|z|)), rounded to f32 as tanhf's result.
              (local.set $t (call $exp (f64.mul (f64.const -2) (f64.abs (local.get $z)))))
              (local.set $t (f64.copysign (f64.div (f64.sub (f64.const 1) (local.get $t)) (f64.add (f64.const 1) (local.get $t))) (local.get $z)))
              (local.set $g (call $f16 (call $f32_to_f16
                (f32.mul (f32.mul (f32.const 0.5) (local.get $x)) (f32.add (f32.const 1) (f32.demote_f64 (local.get $t)))))))))))
        (f32.store $m0 (i32.add (local.get $out) (local.get $at))
          (f32.mul (local.get $g) (f32.load $m0 (i32.add (local.get $up) (local.get $at)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each))))
