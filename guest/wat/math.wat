;; Elementary functions for the guest: wasm has no exp/log/sin/cos
;; instructions and the guest cannot import libm. Only MVP f64/i64/i32
;; instructions, no memory, no imports. Methods and coefficients are the
;; classic fdlibm ones (public minimax polynomials); the code is our own.
;; Accuracy (measured by guest/tests/math.rs against Rust's std):
;;   $exp, $ln: <= 1 ulp in practice, guaranteed <= 2 ulp, every finite input.
;;   $sin, $cos: |err| <= 2^-52 * max(1, |result|) for |x| <= 1.6e6 (exact
;;   Cody-Waite reduction); beyond that the absolute error grows like
;;   |x| * 2^-53 (results stay in [-1, 1]); +-inf and NaN give NaN.
;; Helpers carry the $math_ prefix. This file holds no braces on purpose
;; (the guest's WAT is formatted from Rust).

  ;; e^x. Reduction: x = k*ln2 + r, k = nearest(x/ln2), |r| <= ~0.347, with
  ;; ln2 split in two (ln2hi has 32 significant bits so k*ln2hi is exact and
  ;; x - k*ln2hi is exact for |k| <= 1075). e^r by fdlibm's rational form
  ;; c = r - r^2*P(r^2), e^r = 1 + r + r*c/(2 - c) (error < 1 ulp), then
  ;; scaled by 2^k as two exact powers of two 2^(k>>1) * 2^(k-(k>>1)), so
  ;; k = 1024 and k = -1075 need no special case. Overflow (x > 709.78)
  ;; gives +inf. Subnormal results are not flushed: they are the correctly
  ;; scaled approximation rounded once (within 1 unit of the subnormal
  ;; spacing); results below half the smallest subnormal (x < -745.13) are 0.
  (func $exp (param $x f64) (result f64)
    (local $k f64) (local $hi f64) (local $lo f64) (local $r f64) (local $t f64)
    (local $c f64) (local $y f64) (local $ki i64) (local $k1 i64)
    ;; Only |x| >= 708 or NaN take this branch.
    (if (i32.eqz (f64.lt (f64.abs (local.get $x)) (f64.const 708)))
      (then
        (if (f64.gt (local.get $x) (f64.const 709.8)) (then (return (f64.const inf))))
        (if (f64.lt (local.get $x) (f64.const -745.2)) (then (return (f64.const 0))))
        (if (f64.ne (local.get $x) (local.get $x)) (then (return (f64.add (local.get $x) (local.get $x)))))))
    ;; k = nearest(x / ln2)
    (local.set $k (f64.nearest (f64.mul (local.get $x) (f64.const 0x1.71547652b82fep+0))))
    ;; hi = x - k*ln2hi (exact), lo = k*ln2lo, r = hi - lo
    (local.set $hi (f64.sub (local.get $x) (f64.mul (local.get $k) (f64.const 0x1.62e42feep-1))))
    (local.set $lo (f64.mul (local.get $k) (f64.const 0x1.a39ef35793c76p-33)))
    (local.set $r (f64.sub (local.get $hi) (local.get $lo)))
    (local.set $t (f64.mul (local.get $r) (local.get $r)))
    ;; c = r - t*(P1 + t*(P2 + t*(P3 + t*(P4 + t*P5))))
    (local.set $c
      (f64.sub (local.get $r)
        (f64.mul (local.get $t)
          (f64.add (f64.const 1.66666666666666019037e-01)
            (f64.mul (local.get $t)
              (f64.add (f64.const -2.77777777770155933842e-03)
                (f64.mul (local.get $t)
                  (f64.add (f64.const 6.61375632143793436117e-05)
                    (f64.mul (local.get $t)
                      (f64.add (f64.const -1.65339022054652515390e-06)
                        (f64.mul (local.get $t) (f64.const 4.13813679705723846039e-08))))))))))))
    ;; y = 1 - ((lo - r*c/(2 - c)) - hi) = e^r
    (local.set $y
      (f64.sub (f64.const 1)
        (f64.sub
          (f64.sub (local.get $lo)
            (f64.div (f64.mul (local.get $r) (local.get $c)) (f64.sub (f64.const 2) (local.get $c))))
          (local.get $hi))))
    ;; y * 2^k1 * 2^(k - k1), k1 = k >> 1: both factors are normal numbers.
    (local.set $ki (i64.trunc_f64_s (local.get $k)))
    (local.set $k1 (i64.shr_s (local.get $ki) (i64.const 1)))
    (f64.mul
      (f64.mul (local.get $y)
        (f64.reinterpret_i64 (i64.shl (i64.add (local.get $k1) (i64.const 1023)) (i64.const 52))))
      (f64.reinterpret_i64
        (i64.shl (i64.add (i64.sub (local.get $ki) (local.get $k1)) (i64.const 1023)) (i64.const 52)))))

  ;; Natural log. x = 2^k * m with m in [sqrt(2)/2, sqrt(2)) (subnormal x is
  ;; first scaled by 2^54), f = m - 1, s = f/(2 + f), and
  ;; ln(m) = f - f^2/2 + s*(f^2/2 + R(s^2)) with fdlibm's degree-14 minimax R
  ;; (|error| < 2^-58.45); ln(x) = k*ln2hi + (f - (hfsq - (s*(hfsq + R) +
  ;; k*ln2lo))), error < 1 ulp. ln(+-0) = -inf, ln(x < 0) = NaN, ln(NaN) =
  ;; NaN, ln(+inf) = +inf.
  (func $ln (param $x f64) (result f64)
    (local $ix i64) (local $k i64) (local $f f64) (local $hfsq f64) (local $s f64)
    (local $z f64) (local $w f64) (local $dk f64)
    (local.set $ix (i64.reinterpret_f64 (local.get $x)))
    ;; Only x outside the positive normal finite numbers takes this branch.
    (if (i64.ge_u (i64.sub (local.get $ix) (i64.const 0x0010000000000000)) (i64.const 0x7fe0000000000000))
      (then
        (if (f64.eq (local.get $x) (f64.const 0)) (then (return (f64.const -inf))))
        ;; negative, -inf, NaN -> NaN; +inf -> +inf
        (if (i64.ge_u (local.get $ix) (i64.const 0x7ff0000000000000))
          (then (return (f64.sqrt (local.get $x)))))
        ;; positive subnormal
        (local.set $ix (i64.reinterpret_f64 (f64.mul (local.get $x) (f64.const 0x1p54))))
        (local.set $k (i64.const -54))))
    ;; Move the exponent boundary to sqrt(2)/2: add 0x3ff00000 - 0x3fe6a09e
    ;; to the high word, take the exponent, rebuild m in [0.7071, 1.4142).
    (local.set $ix (i64.add (local.get $ix) (i64.const 0x00095f6200000000)))
    (local.set $k (i64.add (local.get $k)
      (i64.sub (i64.shr_u (local.get $ix) (i64.const 52)) (i64.const 1023))))
    (local.set $f
      (f64.sub
        (f64.reinterpret_i64
          (i64.add (i64.and (local.get $ix) (i64.const 0x000fffffffffffff)) (i64.const 0x3fe6a09e00000000)))
        (f64.const 1)))
    (local.set $hfsq (f64.mul (f64.const 0.5) (f64.mul (local.get $f) (local.get $f))))
    (local.set $s (f64.div (local.get $f) (f64.add (f64.const 2) (local.get $f))))
    (local.set $z (f64.mul (local.get $s) (local.get $s)))
    (local.set $w (f64.mul (local.get $z) (local.get $z)))
    (local.set $dk (f64.convert_i64_s (local.get $k)))
    ;; s*(hfsq + R) + dk*ln2lo - hfsq + f + dk*ln2hi, left to right, with
    ;; R = z*(Lg1 + w*(Lg3 + w*(Lg5 + w*Lg7))) + w*(Lg2 + w*(Lg4 + w*Lg6))
    (f64.add
      (f64.add
        (f64.sub
          (f64.add
            (f64.mul (local.get $s)
              (f64.add (local.get $hfsq)
                (f64.add
                  (f64.mul (local.get $z)
                    (f64.add (f64.const 6.666666666666735130e-01)
                      (f64.mul (local.get $w)
                        (f64.add (f64.const 2.857142874366239149e-01)
                          (f64.mul (local.get $w)
                            (f64.add (f64.const 1.818357216161805012e-01)
                              (f64.mul (local.get $w) (f64.const 1.479819860511658591e-01))))))))
                  (f64.mul (local.get $w)
                    (f64.add (f64.const 3.999999999940941908e-01)
                      (f64.mul (local.get $w)
                        (f64.add (f64.const 2.222219843214978396e-01)
                          (f64.mul (local.get $w) (f64.const 1.531383769920937332e-01)))))))))
            (f64.mul (local.get $dk) (f64.const 0x1.a39ef35793c76p-33)))
          (local.get $hfsq))
        (local.get $f))
      (f64.mul (local.get $dk) (f64.const 0x1.62e42feep-1))))

  ;; sin(x + shift*pi/2). Reduction: n = nearest(x*2/pi), x - n*pi/2 with
  ;; pi/2 = p1 + p2 + p3 + p3t (p1, p2, p3 have 33, 33 and 28 significant
  ;; bits, so for |n| <= 2^20 every n*p product is exact and x - n*p1 is
  ;; exact); the two further subtractions keep their rounding errors
  ;; (TwoSum), leaving the reduced argument as y0 + y1 with |y0| <= ~pi/4 and
  ;; ~150 bits of pi/2. Then fdlibm's kernels: sin(y) = y + y^3*(S1 +
  ;; y^2*S(y^2)) and cos(y) = 1 - y^2/2 + y^4*C(y^2), each error < 1 ulp,
  ;; with the y1 correction terms; quadrant (n + shift) mod 4 picks the
  ;; kernel (odd: cos) and the sign (bit 1).
  (func $math_sin_quadrant (param $x f64) (param $shift i32) (result f64)
    (local $n f64) (local $a f64) (local $w f64) (local $b f64) (local $t f64)
    (local $eb f64) (local $c f64) (local $ec f64) (local $lo f64) (local $y0 f64)
    (local $y1 f64) (local $z f64) (local $v f64) (local $r f64) (local $q i32)
    (local $res f64)
    ;; Only |x| > 1.6e6 (n could exceed 2^20), +-inf and NaN take this branch.
    (if (i32.eqz (f64.le (f64.abs (local.get $x)) (f64.const 1.6e6)))
      (then
        ;; +-inf and NaN -> NaN
        (if (f64.ne (f64.sub (local.get $x) (local.get $x)) (f64.const 0))
          (then (return (f64.sub (local.get $x) (local.get $x)))))
        ;; Large finite x: the phase in quarter turns, x*2/pi mod 4, from one
        ;; rounded product (absolute error about |x|*2^-53), back to [0, 2pi).
        ;; Results stay in [-1, 1]; above 2^55 the phase is 0.
        (local.set $n (f64.mul (local.get $x) (f64.const 0x1.45f306dc9c883p-1)))
        (local.set $x
          (f64.mul
            (f64.sub (local.get $n)
              (f64.mul (f64.const 4) (f64.floor (f64.mul (local.get $n) (f64.const 0.25)))))
            (f64.const 0x1.921fb54442d18p+0)))))
    (local.set $n (f64.nearest (f64.mul (local.get $x) (f64.const 0x1.45f306dc9c883p-1))))
    ;; a = x - n*p1 (exact)
    (local.set $a (f64.sub (local.get $x) (f64.mul (local.get $n) (f64.const 0x1.921fb544p+0))))
    ;; b + eb = a - n*p2 exactly (TwoSum; n*p2 is exact)
    (local.set $w (f64.mul (local.get $n) (f64.const 0x1.0b4611a6p-34)))
    (local.set $b (f64.sub (local.get $a) (local.get $w)))
    (local.set $t (f64.sub (local.get $b) (local.get $a)))
    (local.set $eb (f64.sub (f64.sub (local.get $a) (f64.sub (local.get $b) (local.get $t)))
                            (f64.add (local.get $w) (local.get $t))))
    ;; c + ec = b - n*p3 exactly
    (local.set $w (f64.mul (local.get $n) (f64.const 0x1.3198a2ep-69)))
    (local.set $c (f64.sub (local.get $b) (local.get $w)))
    (local.set $t (f64.sub (local.get $c) (local.get $b)))
    (local.set $ec (f64.sub (f64.sub (local.get $b) (f64.sub (local.get $c) (local.get $t)))
                            (f64.add (local.get $w) (local.get $t))))
    ;; y0 + y1 = c + (eb + ec - n*p3t), renormalised
    (local.set $lo (f64.sub (f64.add (local.get $eb) (local.get $ec))
                            (f64.mul (local.get $n) (f64.const 0x1.b839a252049c1p-104))))
    (local.set $y0 (f64.add (local.get $c) (local.get $lo)))
    (local.set $y1 (f64.sub (local.get $lo) (f64.sub (local.get $y0) (local.get $c))))
    ;; q = (n mod 4) + shift, computed in f64 so no conversion can trap
    (local.set $q
      (i32.add (local.get $shift)
        (i32.trunc_f64_s
          (f64.sub (local.get $n)
            (f64.mul (f64.const 4) (f64.floor (f64.mul (local.get $n) (f64.const 0.25))))))))
    (local.set $z (f64.mul (local.get $y0) (local.get $y0)))
    (local.set $w (f64.mul (local.get $z) (local.get $z)))
    (local.set $res
      (if (result f64) (i32.and (local.get $q) (i32.const 1))
        (then
          ;; cos(y0 + y1): r = z*(C1 + z*(C2 + z*C3)) + w^2*(C4 + z*(C5 + z*C6)),
          ;; hz = z/2, v = 1 - hz, v + (((1 - v) - hz) + (z*r - y0*y1))
          (local.set $r
            (f64.add
              (f64.mul (local.get $z)
                (f64.add (f64.const 4.16666666666666019037e-02)
                  (f64.mul (local.get $z)
                    (f64.add (f64.const -1.38888888888741095749e-03)
                      (f64.mul (local.get $z) (f64.const 2.48015872894767294178e-05))))))
              (f64.mul (f64.mul (local.get $w) (local.get $w))
                (f64.add (f64.const -2.75573143513906633035e-07)
                  (f64.mul (local.get $z)
                    (f64.add (f64.const 2.08757232129817482790e-09)
                      (f64.mul (local.get $z) (f64.const -1.13596475577881948265e-11))))))))
          (local.set $t (f64.mul (f64.const 0.5) (local.get $z)))
          (local.set $v (f64.sub (f64.const 1) (local.get $t)))
          (f64.add (local.get $v)
            (f64.add
              (f64.sub (f64.sub (f64.const 1) (local.get $v)) (local.get $t))
              (f64.sub (f64.mul (local.get $z) (local.get $r))
                       (f64.mul (local.get $y0) (local.get $y1))))))
        (else
          ;; sin(y0 + y1): r = S2 + z*(S3 + z*S4) + z*w*(S5 + z*S6), v = z*y0,
          ;; y0 - ((z*(y1/2 - v*r) - y1) - v*S1)
          (local.set $r
            (f64.add
              (f64.add (f64.const 8.33333333332248946124e-03)
                (f64.mul (local.get $z)
                  (f64.add (f64.const -1.98412698298579493134e-04)
                    (f64.mul (local.get $z) (f64.const 2.75573137070700676789e-06)))))
              (f64.mul (f64.mul (local.get $z) (local.get $w))
                (f64.add (f64.const -2.50507602534068634195e-08)
                  (f64.mul (local.get $z) (f64.const 1.58969099521155010221e-10))))))
          (local.set $v (f64.mul (local.get $z) (local.get $y0)))
          (f64.sub (local.get $y0)
            (f64.sub
              (f64.sub
                (f64.mul (local.get $z)
                  (f64.sub (f64.mul (f64.const 0.5) (local.get $y1))
                           (f64.mul (local.get $v) (local.get $r))))
                (local.get $y1))
              (f64.mul (local.get $v) (f64.const -1.66666666666666324348e-01)))))))
    ;; negate when bit 1 of the quadrant is set
    (f64.reinterpret_i64
      (i64.xor (i64.reinterpret_f64 (local.get $res))
        (i64.shl (i64.extend_i32_u (i32.and (local.get $q) (i32.const 2))) (i64.const 62)))))

  ;; sin(x), see $math_sin_quadrant.
  (func $sin (param $x f64) (result f64)
    (call $math_sin_quadrant (local.get $x) (i32.const 0)))

  ;; cos(x) = sin(x + pi/2), see $math_sin_quadrant.
  (func $cos (param $x f64) (result f64)
    (call $math_sin_quadrant (local.get $x) (i32.const 1)))
