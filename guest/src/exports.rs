//! The one description of the guest's exports: name and signature, read by
//! the host (which resolves and calls every export through it) and checked
//! against the generated module by the guest's tests.
//!
//! Adding a kernel: write its WAT (in `guest/wat/`) and add one line here.

use std::marker::PhantomData;

/// An export with parameters `P` and results `R`, as Rust tuples of the wasm
/// value types (`i32`, `i64`, `f32`): the host calls it as a typed function of
/// exactly that signature, so a mismatch is an error at instantiation.
pub struct Export<P, R> {
    /// The export's name in the module.
    pub name: &'static str,
    /// Its position in [`EXPORTS`], where the host keeps its resolved function.
    pub index: usize,
    signature: PhantomData<fn(P) -> R>,
}

// Manual impls: the derive would needlessly require `P: Copy, R: Copy`.
impl<P, R> Clone for Export<P, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P, R> Copy for Export<P, R> {}

/// A wasm value type, as written in WAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValType {
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `f32`
    F32,
}

/// An export's name and signature, untyped: for checking the module and for
/// hosts in other languages (the browser's JS host reads the same list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The export's name.
    pub name: &'static str,
    /// Parameter types, in order.
    pub params: &'static [ValType],
    /// Result types, in order.
    pub results: &'static [ValType],
}

macro_rules! val_type {
    (i32) => {
        ValType::I32
    };
    (i64) => {
        ValType::I64
    };
    (f32) => {
        ValType::F32
    };
}

macro_rules! exports {
    ($($(#[$doc:meta])* $konst:ident = $name:literal ($($p:ident),*) -> ($($r:ident),*);)*) => {
        exports!(@each 0usize; $($(#[$doc])* $konst = $name ($($p),*) -> ($($r),*);)*);

        /// Every export, in the order of their `index`.
        pub const EXPORTS: &[Signature] = &[$(Signature {
            name: $name,
            params: &[$(val_type!($p)),*],
            results: &[$(val_type!($r)),*],
        },)*];
    };
    (@each $i:expr; $(#[$doc:meta])* $konst:ident = $name:literal ($($p:ident),*) -> ($($r:ident),*); $($rest:tt)*) => {
        $(#[$doc])*
        pub const $konst: Export<($($p,)*), ($($r,)*)> = Export { name: $name, index: $i, signature: PhantomData };
        exports!(@each $i + 1usize; $($rest)*);
    };
    (@each $i:expr;) => {};
}

exports! {
    /// `(logical) -> (shard, offset)`: binary search of the routes; `(-1, 0)`
    /// where no tensor lies.
    ROUTE = "route"(i64) -> (i32, i64);
    /// `(tensor) -> xxh64`: XXH64 (seed 0) of a tensor's bytes, read in place.
    XXH64_TENSOR = "xxh64_tensor"(i32) -> (i64);
    /// `(shard, offset, len) -> xxh64`: the same over any range of a shard.
    XXH64_RANGE = "xxh64_range"(i32, i64, i64) -> (i64);
    /// `(tensor) -> fold`: every byte of a tensor through `v128.load` (the
    /// bandwidth probe).
    STREAM_TENSOR = "stream_tensor"(i32) -> (i64);
    /// `(shard, offset, len) -> fold`: the same over any range.
    STREAM_RANGE = "stream_range"(i32, i64, i64) -> (i64);
    /// `(tensor, first_row, rows, out)`: rows as f32 at scratch `out`,
    /// bit-exact with gguf-py.
    DEQUANTIZE = "dequantize"(i32, i64, i64, i32) -> ();
    /// `(tensor, first_row, rows, x, y, tmp)`: `y[r] = W[first_row + r] · x`
    /// (f32 in scratch; `tmp` holds 4 bytes per element of x).
    MATVEC = "matvec"(i32, i64, i64, i32, i32, i32) -> ();
    /// `(program, thread, threads) -> aborted`: runs the forward-pass
    /// program at scratch offset `program` (guest/README.md, "The program"):
    /// every thread's instance enters it at once and they meet at barriers
    /// inside; 1 when the host aborted the run because another thread failed.
    FORWARD = "forward"(i32, i32, i32) -> (i32);
}
