;; The program interpreter: `forward` runs a whole batch through the
;; operations a host wrote into scratch (guest/README.md, "The program").
;; Every thread's instance enters it with the same program and its own thread
;; index; each operation's rows, tokens or heads are split among the threads,
;; which meet at a barrier in scratch after every operation. Placeholders in
;; braces are guest::program's constants.

  ;; First of thread $k's share of $total items among $threads: total * k / threads.
  (func $share (param $total i32) (param $k i32) (param $threads i32) (result i32)
    (i32.wrap_i64 (i64.div_u
      (i64.mul (i64.extend_i32_u (local.get $total)) (i64.extend_i32_u (local.get $k)))
      (i64.extend_i32_u (local.get $threads)))))

  ;; Waits until all $threads threads have arrived at the barrier whose words
  ;; are at $bar; returns nonzero if the host aborted the run. The last to
  ;; arrive resets the count and bumps the generation; the others spin on the
  ;; generation, then park in memory.atomic.wait32 (counted as sleepers, so
  ;; the last one only notifies when someone sleeps).
  (func $barrier (param $bar i32) (param $threads i32) (result i32)
    (local $generation i32) (local $spins i32)
    (if (i32.le_u (local.get $threads) (i32.const 1)) (then (return (i32.const 0))))
    (local.set $generation (i32.atomic.load $m0 offset={BAR_GENERATION} (local.get $bar)))
    (if (i32.eq (i32.atomic.rmw.add $m0 offset={BAR_COUNT} (local.get $bar) (i32.const 1))
                (i32.sub (local.get $threads) (i32.const 1)))
      (then
        (i32.atomic.store $m0 offset={BAR_COUNT} (local.get $bar) (i32.const 0))
        (i32.atomic.store $m0 offset={BAR_GENERATION} (local.get $bar) (i32.add (local.get $generation) (i32.const 1)))
        (if (i32.atomic.load $m0 offset={BAR_SLEEPERS} (local.get $bar))
          (then (drop (memory.atomic.notify $m0 offset={BAR_GENERATION} (local.get $bar) (i32.const -1)))))
        (return (i32.atomic.load $m0 offset={BAR_ABORT} (local.get $bar)))))
    (loop $spin
      (if (i32.atomic.load $m0 offset={BAR_ABORT} (local.get $bar)) (then (return (i32.const 1))))
      (if (i32.ne (i32.atomic.load $m0 offset={BAR_GENERATION} (local.get $bar)) (local.get $generation))
        (then (return (i32.const 0))))
      (br_if $spin (i32.lt_u (local.tee $spins (i32.add (local.get $spins) (i32.const 1))) (i32.const {BARRIER_SPINS}))))
    (loop $park
      (drop (i32.atomic.rmw.add $m0 offset={BAR_SLEEPERS} (local.get $bar) (i32.const 1)))
      (drop (memory.atomic.wait32 $m0 offset={BAR_GENERATION} (local.get $bar) (local.get $generation) (i64.const -1)))
      (drop (i32.atomic.rmw.sub $m0 offset={BAR_SLEEPERS} (local.get $bar) (i32.const 1)))
      (if (i32.atomic.load $m0 offset={BAR_ABORT} (local.get $bar)) (then (return (i32.const 1))))
      (br_if $park (i32.eq (i32.atomic.load $m0 offset={BAR_GENERATION} (local.get $bar)) (local.get $generation))))
    (i32.const 0))

  ;; Runs the program at $program for thread $thread of $threads. Returns 0,
  ;; or 1 when the host aborted the run because another thread failed.
  (func (export "forward") (param $program i32) (param $thread i32) (param $threads i32) (result i32)
    (local $op i32) (local $end i32) (local $batch i32) (local $n i32) (local $m i32) (local $bar i32)
    (local $profile i32) (local $started f64) (local $entry i32) (local $code i32)
    (local $tmp i32) (local $scores i32) (local $lo i32) (local $hi i32) (local $b i32) (local $rows i32)
    (local $a1 i32) (local $a2 i32) (local $a3 i32) (local $a4 i32) (local $a5 i32)
    (local $a6 i32) (local $a7 i32) (local $a8 i32) (local $a9 i32) (local $a10 i32)
    (local $seq i32) (local $pos i32) (local $width4 i32) (local $kv_row4 i32) (local $fshard i32) (local $fp i64)
    (if (i32.ne (i32.load $m0 (local.get $program)) (i32.const {PROGRAM_MAGIC})) (then unreachable))
    (if (i32.ne (i32.load $m0 offset=4 (local.get $program)) (i32.const {PROGRAM_VERSION})) (then unreachable))
    (if (i32.or (i32.eqz (local.get $threads)) (i32.ge_u (local.get $thread) (local.get $threads))) (then unreachable))
    (local.set $op (i32.load $m0 offset={H_OPS_AT} (local.get $program)))
    (local.set $end (i32.add (local.get $op) (i32.mul (i32.load $m0 offset={H_OPS} (local.get $program)) (i32.const {OP_BYTES}))))
    (local.set $batch (i32.load $m0 offset={H_BATCH_AT} (local.get $program)))
    (local.set $bar (i32.load $m0 offset={H_BARRIER_AT} (local.get $program)))
    (local.set $n (i32.load $m0 offset={B_TOKENS} (local.get $batch)))
    (local.set $m (i32.load $m0 offset={B_OUTPUTS} (local.get $batch)))
    (if (i32.eqz (local.get $thread)) (then (local.set $profile (i32.load $m0 offset={H_PROFILE_AT} (local.get $program)))))
    (local.set $tmp (i32.add (i32.load $m0 offset={H_TMP_AT} (local.get $program))
      (i32.mul (local.get $thread) (i32.load $m0 offset={H_TMP_BYTES} (local.get $program)))))
    (local.set $scores (i32.add (i32.load $m0 offset={H_SCORES_AT} (local.get $program))
      (i32.mul (local.get $thread) (i32.load $m0 offset={H_SCORES_BYTES} (local.get $program)))))
    (block $done
      (loop $each_op
        (br_if $done (i32.ge_u (local.get $op) (local.get $end)))
        (if (local.get $profile) (then (local.set $started (call $now))))
        (local.set $code (i32.load $m0 (local.get $op)))
        (local.set $a1 (i32.load $m0 offset=4 (local.get $op)))
        (local.set $a2 (i32.load $m0 offset=8 (local.get $op)))
        (local.set $a3 (i32.load $m0 offset=12 (local.get $op)))
        (local.set $a4 (i32.load $m0 offset=16 (local.get $op)))
        (local.set $a5 (i32.load $m0 offset=20 (local.get $op)))
        (local.set $a6 (i32.load $m0 offset=24 (local.get $op)))
        (local.set $a7 (i32.load $m0 offset=28 (local.get $op)))
        (local.set $a8 (i32.load $m0 offset=32 (local.get $op)))
        (local.set $a9 (i32.load $m0 offset=36 (local.get $op)))
        (local.set $a10 (i32.load $m0 offset=40 (local.get $op)))
        ;; This thread's share of the batch's tokens (most operations split them).
        (local.set $lo (call $share (local.get $n) (local.get $thread) (local.get $threads)))
        (local.set $hi (call $share (local.get $n) (i32.add (local.get $thread) (i32.const 1)) (local.get $threads)))
        (block $next
        (block $bad
        (block $bias (block $gather (block $add (block $glu (block $attention (block $store_kv
        (block $rope (block $matmul (block $rms_norm (block $scale (block $embed
          (br_table {OP_LABELS} $bad (local.get $code)))
        ;; embed [tensor, out, width]
        (local.set $b (local.get $lo))
        (block $embedded
          (loop $each_token
            (br_if $embedded (i32.ge_u (local.get $b) (local.get $hi)))
            (call $dequantize (local.get $a1)
              (i64.extend_i32_u (i32.load $m0 offset={B_IDS} (i32.add (local.get $batch) (i32.shl (local.get $b) (i32.const 2)))))
              (i64.const 1)
              (i32.add (local.get $a2) (i32.shl (i32.mul (local.get $b) (local.get $a3)) (i32.const 2))))
            (local.set $b (i32.add (local.get $b) (i32.const 1)))
            (br $each_token)))
        (br $next))
        ;; scale [buf, width, factor]
        (call $scale (i32.add (local.get $a1) (i32.shl (i32.mul (local.get $lo) (local.get $a2)) (i32.const 2)))
          (i32.mul (i32.sub (local.get $hi) (local.get $lo)) (local.get $a2)) (f32.reinterpret_i32 (local.get $a3)))
        (br $next))
        ;; rms_norm [x, width, eps, weight, out, per_row, rows]
        (local.set $rows (i32.mul (select (local.get $m) (local.get $n) (local.get $a7)) (local.get $a6)))
        (local.set $lo (call $share (local.get $rows) (local.get $thread) (local.get $threads)))
        (local.set $hi (call $share (local.get $rows) (i32.add (local.get $thread) (i32.const 1)) (local.get $threads)))
        (if (i32.lt_u (local.get $lo) (local.get $hi))
          (then (call $rms_norm
            (i32.add (local.get $a1) (i32.shl (i32.mul (local.get $lo) (local.get $a2)) (i32.const 2)))
            (i32.sub (local.get $hi) (local.get $lo)) (local.get $a2) (f32.reinterpret_i32 (local.get $a3)) (local.get $a4)
            (i32.add (local.get $a5) (i32.shl (i32.mul (local.get $lo) (local.get $a2)) (i32.const 2))))))
        (br $next))
        ;; matmul [tensor, rows, x, y, y_stride, rows]: the weight's rows split among the threads.
        (local.set $b (select (local.get $m) (local.get $n) (local.get $a6)))
        (local.set $lo (call $share (local.get $a2) (local.get $thread) (local.get $threads)))
        (local.set $hi (call $share (local.get $a2) (i32.add (local.get $thread) (i32.const 1)) (local.get $threads)))
        (if (i32.and (i32.lt_u (local.get $lo) (local.get $hi)) (i32.ne (local.get $b) (i32.const 0)))
          (then (call $matmul (local.get $a1) (i64.extend_i32_u (local.get $lo)) (i64.extend_i32_u (i32.sub (local.get $hi) (local.get $lo)))
            (local.get $a3) (local.get $b) (i32.add (local.get $a4) (i32.shl (local.get $lo) (i32.const 2))) (local.get $a5) (local.get $tmp))))
        (br $next))
        ;; rope [buf, heads, head_dim, base, neox, factors]
        (local.set $width4 (i32.shl (i32.mul (local.get $a2) (local.get $a3)) (i32.const 2)))
        (local.set $b (local.get $lo))
        (block $rotated
          (loop $each_token
            (br_if $rotated (i32.ge_u (local.get $b) (local.get $hi)))
            (call $rope (i32.add (local.get $a1) (i32.mul (local.get $b) (local.get $width4))) (i32.const 1)
              (local.get $a2) (local.get $a3)
              (i32.load $m0 offset={B_POSITIONS} (i32.add (local.get $batch) (i32.shl (local.get $b) (i32.const 2))))
              (f32.reinterpret_i32 (local.get $a4)) (local.get $a5) (local.get $a6))
            (local.set $b (i32.add (local.get $b) (i32.const 1)))
            (br $each_token)))
        (br $next))
        ;; store_kv [k, v, width, k_cache, v_cache, capacity]: row seq * capacity + pos mod capacity.
        (local.set $width4 (i32.shl (local.get $a3) (i32.const 2)))
        (local.set $b (local.get $lo))
        (block $stored
          (loop $each_token
            (br_if $stored (i32.ge_u (local.get $b) (local.get $hi)))
            (local.set $seq (i32.load $m0 offset={B_SEQS} (i32.add (local.get $batch) (i32.shl (local.get $b) (i32.const 2)))))
            (local.set $pos (i32.load $m0 offset={B_POSITIONS} (i32.add (local.get $batch) (i32.shl (local.get $b) (i32.const 2)))))
            (call $store_kv
              (i32.add (local.get $a1) (i32.mul (local.get $b) (local.get $width4)))
              (i32.add (local.get $a2) (i32.mul (local.get $b) (local.get $width4)))
              (i32.const 1) (local.get $a3) (local.get $a4) (local.get $a5)
              (i32.add (i32.mul (local.get $seq) (local.get $a6)) (i32.rem_u (local.get $pos) (local.get $a6))))
            (local.set $b (i32.add (local.get $b) (i32.const 1)))
            (br $each_token)))
        (br $next))
        ;; attention [q, heads, kv_heads, head_dim, k_cache, v_cache, scale, window, capacity, out]:
        ;; the query heads split among the threads, every token of the batch.
        (local.set $width4 (i32.shl (i32.mul (local.get $a2) (local.get $a4)) (i32.const 2)))
        (local.set $kv_row4 (i32.shl (i32.mul (i32.mul (local.get $a3) (local.get $a4)) (local.get $a9)) (i32.const 1)))
        (local.set $lo (call $share (local.get $a2) (local.get $thread) (local.get $threads)))
        (local.set $hi (call $share (local.get $a2) (i32.add (local.get $thread) (i32.const 1)) (local.get $threads)))
        (if (i32.lt_u (local.get $lo) (local.get $hi))
          (then
            (local.set $b (i32.const 0))
            (block $attended
              (loop $each_token
                (br_if $attended (i32.ge_u (local.get $b) (local.get $n)))
                (local.set $seq (i32.load $m0 offset={B_SEQS} (i32.add (local.get $batch) (i32.shl (local.get $b) (i32.const 2)))))
                (call $attention
                  (i32.add (local.get $a1) (i32.mul (local.get $b) (local.get $width4)))
                  (i32.load $m0 offset={B_POSITIONS} (i32.add (local.get $batch) (i32.shl (local.get $b) (i32.const 2))))
                  (local.get $a2) (local.get $a3) (local.get $a4)
                  (i32.add (local.get $a5) (i32.mul (local.get $seq) (local.get $kv_row4)))
                  (i32.add (local.get $a6) (i32.mul (local.get $seq) (local.get $kv_row4)))
                  (f32.reinterpret_i32 (local.get $a7)) (local.get $a8) (local.get $a9) (local.get $scores)
                  (i32.add (local.get $a10) (i32.mul (local.get $b) (local.get $width4)))
                  (local.get $lo) (local.get $hi))
                (local.set $b (i32.add (local.get $b) (i32.const 1)))
                (br $each_token)))))
        (br $next))
        ;; glu [gate, up, width, kind]
        (local.set $width4 (i32.shl (i32.mul (local.get $lo) (local.get $a3)) (i32.const 2)))
        (local.set $rows (i32.mul (i32.sub (local.get $hi) (local.get $lo)) (local.get $a3)))
        (if (local.get $a4)
          (then (call $gelu_mul (i32.add (local.get $a1) (local.get $width4)) (i32.add (local.get $a2) (local.get $width4))
            (local.get $rows) (i32.add (local.get $a1) (local.get $width4))))
          (else (call $silu_mul (i32.add (local.get $a1) (local.get $width4)) (i32.add (local.get $a2) (local.get $width4))
            (local.get $rows) (i32.add (local.get $a1) (local.get $width4)))))
        (br $next))
        ;; add [a, b, width]
        (local.set $width4 (i32.shl (i32.mul (local.get $lo) (local.get $a3)) (i32.const 2)))
        (call $add (i32.add (local.get $a1) (local.get $width4)) (i32.add (local.get $a2) (local.get $width4))
          (i32.mul (i32.sub (local.get $hi) (local.get $lo)) (local.get $a3)) (i32.add (local.get $a1) (local.get $width4)))
        (br $next))
        ;; gather [x, width, out]: output row j is token row OUTPUT_ROWS[j] of x.
        (local.set $width4 (i32.shl (local.get $a2) (i32.const 2)))
        (local.set $lo (call $share (local.get $m) (local.get $thread) (local.get $threads)))
        (local.set $hi (call $share (local.get $m) (i32.add (local.get $thread) (i32.const 1)) (local.get $threads)))
        (local.set $b (local.get $lo))
        (block $gathered
          (loop $each_output
            (br_if $gathered (i32.ge_u (local.get $b) (local.get $hi)))
            (memory.copy $m0 $m0
              (i32.add (local.get $a3) (i32.mul (local.get $b) (local.get $width4)))
              (i32.add (local.get $a1) (i32.mul (local.get $width4)
                (i32.load $m0 offset={B_OUTPUT_ROWS} (i32.add (local.get $batch) (i32.shl (local.get $b) (i32.const 2))))))
              (local.get $width4))
            (local.set $b (i32.add (local.get $b) (i32.const 1)))
            (br $each_output)))
        (br $next))
        ;; bias [x, width, tensor]: each token row of x plus the F32 tensor (Qwen's Q, K and V).
        (call $f32_tensor (local.get $a3) (local.get $a2))
        (local.set $fp) (local.set $fshard)
        (local.set $width4 (i32.shl (local.get $a2) (i32.const 2)))
        (local.set $b (local.get $lo))
        (block $biased
          (loop $each_row
            (br_if $biased (i32.ge_u (local.get $b) (local.get $hi)))
            (call $f32_bias (local.get $fshard) (local.get $fp)
              (i32.add (local.get $a1) (i32.mul (local.get $b) (local.get $width4))) (local.get $a2))
            (local.set $b (i32.add (local.get $b) (i32.const 1)))
            (br $each_row)))
        (br $next))
        ;; An unknown opcode.
        unreachable)
        (if (call $barrier (local.get $bar) (local.get $threads)) (then (return (i32.const 1))))
        (if (local.get $profile)
          (then
            (local.set $entry (i32.add (local.get $profile) (i32.mul (local.get $code) (i32.const {PROFILE_ENTRY_BYTES}))))
            (f64.store $m0 (local.get $entry) (f64.add (f64.load $m0 (local.get $entry)) (f64.const 1)))
            (f64.store $m0 offset=8 (local.get $entry)
              (f64.add (f64.load $m0 offset=8 (local.get $entry)) (f64.sub (call $now) (local.get $started))))))
        (local.set $op (i32.add (local.get $op) (i32.const {OP_BYTES})))
        (br $each_op)))
    (i32.const 0))
