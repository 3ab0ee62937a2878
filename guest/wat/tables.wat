;; The routing and tensor tables in scratch (layout: src/abi.rs), and the
;; exports over them. Placeholders in braces are abi::WAT_CONSTANTS.
  (func $n_routes (result i32) (i32.load $m0 offset={HEADER_ROUTES} (i32.const 0)))
  (func $n_tensors (result i32) (i32.load $m0 offset={HEADER_TENSORS} (i32.const 0)))

  ;; Address of tensor $t's entry; traps on an unknown tensor.
  (func $tensor_entry (param $t i32) (result i32)
    (if (i32.ge_u (local.get $t) (call $n_tensors)) (then unreachable))
    (i32.add (i32.add (i32.const {HEADER_BYTES}) (i32.mul (call $n_routes) (i32.const {ROUTE_BYTES})))
             (i32.mul (local.get $t) (i32.const {TENSOR_BYTES}))))

  ;; (shard, offset) of a logical offset, or (-1, 0) where no tensor lies:
  ;; binary search for the last route starting at or before $x.
  (func (export "route") (param $x i64) (result i32 i64)
    (local $lo i32) (local $hi i32) (local $mid i32) (local $e i32)
    (local.set $hi (call $n_routes))
    (block $found
      (loop $search
        (br_if $found (i32.ge_u (local.get $lo) (local.get $hi)))
        (local.set $mid (i32.shr_u (i32.add (local.get $lo) (local.get $hi)) (i32.const 1)))
        (if (i64.le_u (i64.load $m0 offset={ROUTE_LOGICAL_START} (i32.add (i32.const {HEADER_BYTES}) (i32.mul (local.get $mid) (i32.const {ROUTE_BYTES})))) (local.get $x))
          (then (local.set $lo (i32.add (local.get $mid) (i32.const 1))))
          (else (local.set $hi (local.get $mid))))
        (br $search)))
    (if (i32.eqz (local.get $lo)) (then (return (i32.const -1) (i64.const 0))))
    (local.set $e (i32.add (i32.const {HEADER_BYTES}) (i32.mul (i32.sub (local.get $lo) (i32.const 1)) (i32.const {ROUTE_BYTES}))))
    (if (i64.ge_u (local.get $x) (i64.load $m0 offset={ROUTE_LOGICAL_END} (local.get $e))) (then (return (i32.const -1) (i64.const 0))))
    (i32.load $m0 offset={ROUTE_SHARD} (local.get $e))
    (i64.add (i64.load $m0 offset={ROUTE_SHARD_OFFSET} (local.get $e)) (i64.sub (local.get $x) (i64.load $m0 offset={ROUTE_LOGICAL_START} (local.get $e)))))

  ;; XXH64 (seed 0) of tensor $t's bytes, read in place from its shard.
  (func (export "xxh64_tensor") (param $t i32) (result i64)
    (local $e i32)
    (local.set $e (call $tensor_entry (local.get $t)))
    (call $xxh64_range (i32.load $m0 offset={TENSOR_SHARD} (local.get $e)) (i64.load $m0 offset={TENSOR_OFFSET} (local.get $e)) (i64.load $m0 offset={TENSOR_SIZE} (local.get $e))))

  ;; Streams tensor $t's bytes through v128 loads (the bandwidth probe).
  (func (export "stream_tensor") (param $t i32) (result i64)
    (local $e i32)
    (local.set $e (call $tensor_entry (local.get $t)))
    (call $stream_range (i32.load $m0 offset={TENSOR_SHARD} (local.get $e)) (i64.load $m0 offset={TENSOR_OFFSET} (local.get $e)) (i64.load $m0 offset={TENSOR_SIZE} (local.get $e))))
