//! guest/wat/math.wat ($exp, $ln, $sin, $cos) against Rust's std (libm) under wasmtime.
//!
//! exp and ln are held to 2 ulp, measured as the distance between bit patterns.
//! sin and cos are held to |err| <= 2^-52 * max(1, |result|) for |x| <= 1e6
//! (their bit-pattern distance is measured and bounded too); beyond 1.6e6 they only
//! promise an absolute error of about |x| * 2^-53 and results in [-1, 1].

use std::cell::RefCell;

use proptest::prelude::*;
use wasmtime::{Engine, Instance, Module, Store, TypedFunc};

const MATH_WAT: &str = include_str!("../wat/math.wat");

fn module_text() -> String {
    format!(
        "(module\n{MATH_WAT}\n(export \"exp\" (func $exp)) (export \"ln\" (func $ln)) \
         (export \"sin\" (func $sin)) (export \"cos\" (func $cos)))"
    )
}

struct Math {
    store: Store<()>,
    exp: TypedFunc<f64, f64>,
    ln: TypedFunc<f64, f64>,
    sin: TypedFunc<f64, f64>,
    cos: TypedFunc<f64, f64>,
}

impl Math {
    fn new() -> Math {
        let engine = Engine::default();
        let module = Module::new(&engine, wat::parse_str(module_text()).unwrap()).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        let mut func = |name: &str| {
            instance
                .get_typed_func::<f64, f64>(&mut store, name)
                .unwrap()
        };
        let (exp, ln, sin, cos) = (func("exp"), func("ln"), func("sin"), func("cos"));
        Math {
            store,
            exp,
            ln,
            sin,
            cos,
        }
    }

    fn exp(&mut self, x: f64) -> f64 {
        self.exp.call(&mut self.store, x).unwrap()
    }
    fn ln(&mut self, x: f64) -> f64 {
        self.ln.call(&mut self.store, x).unwrap()
    }
    fn sin(&mut self, x: f64) -> f64 {
        self.sin.call(&mut self.store, x).unwrap()
    }
    fn cos(&mut self, x: f64) -> f64 {
        self.cos.call(&mut self.store, x).unwrap()
    }
}

thread_local! {
    static MATH: RefCell<Math> = RefCell::new(Math::new());
}

fn with_math<T>(f: impl FnOnce(&mut Math) -> T) -> T {
    MATH.with(|m| f(&mut m.borrow_mut()))
}

/// Distance in ulps between two results: the difference of their bit patterns when
/// they have the same sign (both zeros: 0); NaN against NaN is 0, anything else
/// against NaN or a sign mismatch between non-zeros is u64::MAX.
fn ulps(got: f64, want: f64) -> u64 {
    if got.is_nan() || want.is_nan() {
        return if got.is_nan() && want.is_nan() {
            0
        } else {
            u64::MAX
        };
    }
    if got == 0.0 && want == 0.0 {
        return 0;
    }
    if got.is_sign_negative() != want.is_sign_negative() {
        return u64::MAX;
    }
    got.to_bits().abs_diff(want.to_bits())
}

/// |got - want| in units of 2^-52 * max(1, |want|) (the sin/cos bound is 1).
fn abs_rel(got: f64, want: f64) -> f64 {
    if got.is_nan() || want.is_nan() {
        return if got.is_nan() && want.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    (got - want).abs() / (f64::EPSILON * want.abs().max(1.0))
}

/// Largest ulp error of `f` against `reference` over `xs`, with the worst input.
fn max_ulps(
    xs: impl Iterator<Item = f64>,
    f: fn(&mut Math, f64) -> f64,
    reference: fn(f64) -> f64,
) -> (u64, f64) {
    with_math(|m| {
        let mut worst = (0, f64::NAN);
        for x in xs {
            let e = ulps(f(m, x), reference(x));
            if e > worst.0 || worst.1.is_nan() {
                worst = (e, x);
            }
        }
        worst
    })
}

/// Largest abs-rel error and largest ulp error of `f` against `reference` over `xs`.
fn max_errors(
    xs: impl Iterator<Item = f64>,
    f: fn(&mut Math, f64) -> f64,
    reference: fn(f64) -> f64,
) -> (f64, f64, u64, f64) {
    with_math(|m| {
        let (mut worst_abs, mut at_abs, mut worst_ulp, mut at_ulp) = (0.0, f64::NAN, 0, f64::NAN);
        for x in xs {
            let (got, want) = (f(m, x), reference(x));
            let a = abs_rel(got, want);
            if a > worst_abs || at_abs.is_nan() {
                (worst_abs, at_abs) = (a, x);
            }
            let u = ulps(got, want);
            if u > worst_ulp || at_ulp.is_nan() {
                (worst_ulp, at_ulp) = (u, x);
            }
        }
        (worst_abs, at_abs, worst_ulp, at_ulp)
    })
}

fn linspace(a: f64, b: f64, n: usize) -> impl Iterator<Item = f64> + Clone {
    (0..n).map(move |i| a + (b - a) * (i as f64 / (n - 1) as f64))
}

fn logspace(a: f64, b: f64, n: usize) -> impl Iterator<Item = f64> + Clone {
    let (la, lb) = (a.log2(), b.log2());
    (0..n).map(move |i| (la + (lb - la) * (i as f64 / (n - 1) as f64)).exp2())
}

const SWEEP: usize = 100_000;

#[test]
fn math_wat_is_a_list_of_mvp_functions_without_braces() {
    assert!(
        !MATH_WAT.contains(['{', '}']),
        "math.wat is embedded in format!ed WAT"
    );
    let wasm = wat::parse_str(module_text()).unwrap();
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::WASM1)
        .validate_all(&wasm)
        .unwrap();
}

#[test]
fn exp_special_values() {
    with_math(|m| {
        assert_eq!(m.exp(0.0).to_bits(), 1f64.to_bits());
        assert_eq!(m.exp(-0.0).to_bits(), 1f64.to_bits());
        assert_eq!(m.exp(f64::MIN_POSITIVE / 1e10), 1.0);
        assert_eq!(m.exp(f64::NEG_INFINITY).to_bits(), 0);
        assert_eq!(m.exp(f64::INFINITY), f64::INFINITY);
        assert!(m.exp(f64::NAN).is_nan());
        assert!(m.exp(-f64::NAN).is_nan());
        assert!(ulps(m.exp(1.0), std::f64::consts::E) <= 1);
        assert!(ulps(m.exp(709.78), 709.78f64.exp()) <= 2);
        assert!(m.exp(709.782712893384).is_finite());
        assert_eq!(m.exp(709.7828), f64::INFINITY);
        assert_eq!(m.exp(710.0), f64::INFINITY);
        assert_eq!(m.exp(1e300), f64::INFINITY);
        assert_eq!(m.exp(f64::MAX), f64::INFINITY);
        // Subnormal results are not flushed.
        assert_eq!(m.exp(-745.0), (-745.0f64).exp());
        assert_eq!(m.exp(-745.13), f64::from_bits(1));
        assert!(ulps(m.exp(-720.0), (-720.0f64).exp()) <= 1);
        assert_eq!(m.exp(-745.14).to_bits(), 0);
        assert_eq!(m.exp(-746.0).to_bits(), 0);
        assert_eq!(m.exp(-1e300).to_bits(), 0);
        assert_eq!(m.exp(f64::MIN).to_bits(), 0);
    });
}

#[test]
fn ln_special_values() {
    with_math(|m| {
        assert_eq!(m.ln(1.0).to_bits(), 0);
        assert_eq!(m.ln(0.0), f64::NEG_INFINITY);
        assert_eq!(m.ln(-0.0), f64::NEG_INFINITY);
        assert!(m.ln(-1.0).is_nan());
        assert!(m.ln(-f64::MIN_POSITIVE).is_nan());
        assert!(m.ln(-f64::from_bits(1)).is_nan());
        assert!(m.ln(f64::NEG_INFINITY).is_nan());
        assert!(m.ln(f64::NAN).is_nan());
        assert_eq!(m.ln(f64::INFINITY), f64::INFINITY);
        assert!(ulps(m.ln(std::f64::consts::E), 1.0) <= 1);
        assert!(ulps(m.ln(2.0), std::f64::consts::LN_2) <= 1);
        for x in [
            f64::from_bits(1),
            f64::from_bits(0x000f_ffff_ffff_ffff),
            f64::MIN_POSITIVE,
            f64::MAX,
            1e-310,
        ] {
            assert!(ulps(m.ln(x), x.ln()) <= 1, "ln({x:e})");
        }
    });
}

#[test]
fn sin_and_cos_special_values() {
    with_math(|m| {
        assert_eq!(m.sin(0.0).to_bits(), 0);
        assert_eq!(m.cos(0.0), 1.0);
        assert_eq!(m.cos(-0.0), 1.0);
        assert_eq!(m.sin(1e-300), 1e-300);
        assert_eq!(m.sin(-1e-300), -1e-300);
        assert_eq!(m.sin(f64::from_bits(1)), f64::from_bits(1));
        for x in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            assert!(m.sin(x).is_nan());
            assert!(m.cos(x).is_nan());
        }
        for k in -8..=8 {
            let x = f64::from(k) * std::f64::consts::FRAC_PI_2;
            assert!(ulps(m.sin(x), x.sin()) <= 2, "sin({x})");
            assert!(ulps(m.cos(x), x.cos()) <= 2, "cos({x})");
        }
    });
}

#[test]
fn exp_dense_sweep_over_minus_745_to_710_is_within_2_ulp() {
    let (e, x) = max_ulps(linspace(-745.2, 709.8, SWEEP), Math::exp, f64::exp);
    println!("exp sweep [-745.2, 709.8]: max {e} ulp at {x:e}");
    assert!(e <= 2, "{e} ulp at {x:e}");
    let (e, x) = max_ulps(linspace(-2.0, 2.0, SWEEP), Math::exp, f64::exp);
    println!("exp sweep [-2, 2]: max {e} ulp at {x:e}");
    assert!(e <= 2, "{e} ulp at {x:e}");
}

#[test]
fn ln_dense_sweep_from_1e_minus_300_to_1e300_is_within_2_ulp() {
    let (e, x) = max_ulps(logspace(1e-300, 1e300, SWEEP), Math::ln, f64::ln);
    println!("ln sweep [1e-300, 1e300] log-spaced: max {e} ulp at {x:e}");
    assert!(e <= 2, "{e} ulp at {x:e}");
    let (e, x) = max_ulps(linspace(0.5, 2.0, SWEEP), Math::ln, f64::ln);
    println!("ln sweep [0.5, 2]: max {e} ulp at {x:e}");
    assert!(e <= 2, "{e} ulp at {x:e}");
    let (e, x) = max_ulps(logspace(5e-324, 2.3e-308, SWEEP), Math::ln, f64::ln);
    println!("ln sweep subnormals: max {e} ulp at {x:e}");
    assert!(e <= 2, "{e} ulp at {x:e}");
}

fn check_trig_sweep(name: &str, xs: impl Iterator<Item = f64> + Clone) {
    for (fname, f, reference) in [
        (
            "sin",
            Math::sin as fn(&mut Math, f64) -> f64,
            f64::sin as fn(f64) -> f64,
        ),
        ("cos", Math::cos, f64::cos),
    ] {
        let (a, at_a, u, at_u) = max_errors(xs.clone(), f, reference);
        println!(
            "{fname} sweep {name}: max {a:.3} x 2^-52*max(1,|y|) at {at_a:e}, max {u} ulp at {at_u:e}"
        );
        assert!(a <= 1.0, "{fname}({at_a:e}): {a} x 2^-52");
        assert!(u <= 2, "{fname}({at_u:e}): {u} ulp");
    }
}

#[test]
fn sin_and_cos_dense_sweep_over_one_turn_are_within_bound() {
    check_trig_sweep("[0, 2pi]", linspace(0.0, std::f64::consts::TAU, SWEEP));
}

#[test]
fn sin_and_cos_dense_sweep_over_plus_minus_1e6_are_within_bound() {
    check_trig_sweep("[-1e6, 1e6]", linspace(-1e6, 1e6, SWEEP));
}

#[test]
fn sin_and_cos_near_multiples_of_half_pi_up_to_1e6_are_within_bound() {
    // The doubles nearest to k*pi/2, where the reduction cancels the most.
    let near = (1..50_000i32).map(|i| f64::from(i * 12 + i % 7) * std::f64::consts::FRAC_PI_2);
    check_trig_sweep("near k*pi/2", near);
}

fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
}

fn positive() -> impl Strategy<Value = f64> {
    prop::num::f64::POSITIVE | prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn exp_is_within_2_ulp_of_std_for_every_finite_input(
        x in prop_oneof![-745.2f64..709.8, -50.0f64..50.0, -1e-3f64..1e-3, finite()]
    ) {
        let (got, want) = with_math(|m| (m.exp(x), x.exp()));
        prop_assert!(ulps(got, want) <= 2, "exp({:e}) = {:e}, std {:e}", x, got, want);
    }

    #[test]
    fn ln_is_within_2_ulp_of_std_for_every_positive_input(
        x in prop_oneof![0.5f64..2.0, 1e-300f64..1e300, positive()]
    ) {
        let (got, want) = with_math(|m| (m.ln(x), x.ln()));
        prop_assert!(ulps(got, want) <= 2, "ln({:e}) = {:e}, std {:e}", x, got, want);
    }

    #[test]
    fn ln_of_a_negative_input_is_nan(x in prop::num::f64::NEGATIVE) {
        prop_assert!(with_math(|m| m.ln(x)).is_nan());
    }

    #[test]
    fn sin_and_cos_are_within_2_to_minus_52_of_std_up_to_1e6(
        x in prop_oneof![-1e6f64..1e6, -1e5f64..1e5, -10.0f64..10.0, -1e-3f64..1e-3]
    ) {
        let (s, c) = with_math(|m| (m.sin(x), m.cos(x)));
        prop_assert!(abs_rel(s, x.sin()) <= 1.0, "sin({:e}) = {:e}, std {:e}", x, s, x.sin());
        prop_assert!(abs_rel(c, x.cos()) <= 1.0, "cos({:e}) = {:e}, std {:e}", x, c, x.cos());
        prop_assert!(ulps(s, x.sin()) <= 2, "sin({:e}) = {:e}, std {:e}", x, s, x.sin());
        prop_assert!(ulps(c, x.cos()) <= 2, "cos({:e}) = {:e}, std {:e}", x, c, x.cos());
    }

    #[test]
    fn sin_and_cos_of_any_finite_input_lie_in_minus_1_to_1(x in finite()) {
        let (s, c) = with_math(|m| (m.sin(x), m.cos(x)));
        prop_assert!((-1.0..=1.0).contains(&s), "sin({:e}) = {:e}", x, s);
        prop_assert!((-1.0..=1.0).contains(&c), "cos({:e}) = {:e}", x, c);
    }

    #[test]
    fn sin_and_cos_beyond_1_6e6_lose_at_most_x_times_2_to_minus_51(
        x in prop_oneof![1.6e6f64..1e7, 1e7f64..1e12, -1e12f64..-1.6e6]
    ) {
        let (s, c) = with_math(|m| (m.sin(x), m.cos(x)));
        let bound = x.abs() * 2f64.powi(-51);
        prop_assert!((s - x.sin()).abs() <= bound, "sin({:e}) = {:e}, std {:e}", x, s, x.sin());
        prop_assert!((c - x.cos()).abs() <= bound, "cos({:e}) = {:e}, std {:e}", x, c, x.cos());
    }
}
