//! The store over real models: guests read every tensor in place from mapped
//! (and copied) shard memories, and agree with independent references.

use proptest::prelude::*;
use shard_planner::{PlanOptions, Router};
use shardload_store::{GuestInstance, LoadMode, OpenModel, WeightStore};
use shardload_suite::{GEMMA, SMOLLM2, model, reference_xxh64};

fn store(name: &str, shards: u32, mode: LoadMode) -> WeightStore {
    let opened = OpenModel::open(&model(name)).unwrap();
    let plan = opened
        .plan(&PlanOptions {
            shards: Some(shards),
            ..PlanOptions::default()
        })
        .unwrap();
    WeightStore::new(plan, mode).unwrap()
}

fn guest_hashes_match_python_xxhash(name: &str, mode: LoadMode) {
    let store = store(name, 4, mode);
    let reference = reference_xxh64(&model(name));
    let (mut guest, _) = store.instantiate().unwrap();
    assert_eq!(reference.len(), store.plan().tensors.len());
    for (i, tensor) in store.plan().tensors.iter().enumerate() {
        let hash = format!("{:016x}", guest.xxh64_tensor(i).unwrap());
        assert_eq!(
            hash, reference[&tensor.span.name],
            "tensor {}",
            tensor.span.name
        );
    }
}

#[test]
fn smollm2_every_guest_hash_from_mapped_shards_equals_python_xxhash() {
    guest_hashes_match_python_xxhash(SMOLLM2, LoadMode::Mmap);
}

#[test]
fn gemma_every_guest_hash_from_mapped_shards_equals_python_xxhash() {
    guest_hashes_match_python_xxhash(GEMMA, LoadMode::Mmap);
}

#[test]
fn gemma_every_guest_hash_from_copied_shards_equals_python_xxhash() {
    guest_hashes_match_python_xxhash(GEMMA, LoadMode::Copy);
}

#[test]
fn host_reference_hash_equals_python_xxhash() {
    let store = store(SMOLLM2, 3, LoadMode::Mmap);
    let reference = reference_xxh64(&model(SMOLLM2));
    for (i, tensor) in store.plan().tensors.iter().enumerate().step_by(17) {
        assert_eq!(
            format!("{:016x}", store.host_xxh64(i).unwrap()),
            reference[&tensor.span.name]
        );
    }
}

#[test]
fn a_guest_writing_into_a_weight_memory_changes_nothing_on_disk() {
    let path = model(SMOLLM2);
    let before = std::fs::read(&path).unwrap();
    let store = store(SMOLLM2, 2, LoadMode::Mmap);
    let tensor = 0;
    let (mut guest, _) = store.instantiate().unwrap();
    let original = guest.xxh64_tensor(tensor).unwrap();
    let placed = store.plan().tensors[tensor].clone();
    let (wasm_store, memory) = guest.shard_memory(placed.shard as usize);
    // A module of its own that stores into the shard memory, as any guest could.
    let engine = wasm_store.engine().clone();
    let writer = wat::parse_str(
        r#"(module (import "m" "shard" (memory i64 0))
             (func (export "scribble") (param i64 i64)
               (local $i i64)
               (loop $l (i64.store8 (i64.add (local.get 0) (local.get $i)) (i64.const 0xAB))
                 (local.set $i (i64.add (local.get $i) (i64.const 1)))
                 (br_if $l (i64.lt_u (local.get $i) (local.get 1))))))"#,
    )
    .unwrap();
    let writer = wasmtime::Module::new(&engine, writer).unwrap();
    let instance = wasmtime::Instance::new(&mut *wasm_store, &writer, &[memory.into()]).unwrap();
    let scribble = instance
        .get_typed_func::<(i64, i64), ()>(&mut *wasm_store, "scribble")
        .unwrap();
    scribble
        .call(&mut *wasm_store, (placed.offset as i64, 4096))
        .unwrap();
    assert_ne!(
        guest.xxh64_tensor(tensor).unwrap(),
        original,
        "the guest sees its own write"
    );
    drop(guest);
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the model file changed"
    );
    // And a fresh instance sees the file's bytes again.
    let (mut fresh, _) = store.instantiate().unwrap();
    assert_eq!(fresh.xxh64_tensor(tensor).unwrap(), original);
}

#[test]
fn a_plan_from_another_model_is_refused_before_anything_is_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let plan_file = dir.path().join("gemma-plan.json");
    let gemma = OpenModel::open(&model(GEMMA)).unwrap();
    std::fs::write(
        &plan_file,
        gemma.plan(&PlanOptions::default()).unwrap().to_json(),
    )
    .unwrap();
    let smollm2 = OpenModel::open(&model(SMOLLM2)).unwrap();
    let error = smollm2
        .load_plan(&plan_file)
        .expect_err("refused")
        .to_string();
    assert!(error.contains("was not made from"), "{error}");
}

#[test]
fn a_trap_names_the_export_and_the_tensor() {
    let store = store(SMOLLM2, 2, LoadMode::Mmap);
    let (mut guest, _) = store.instantiate().unwrap();
    // Rows past the tensor's end pass the host's checks and trap in the guest
    // (its row check), so the error comes from a real wasm trap.
    let (index, tensor) = store
        .plan()
        .tensors
        .iter()
        .enumerate()
        .find(|(_, t)| t.span.name == "blk.0.attn_q.weight")
        .unwrap();
    let rows = tensor.span.dims[1];
    let error = guest.dequantize(index, rows, 1).unwrap_err();
    let trap = error.downcast_ref::<wasmtime::Trap>().copied();
    assert_eq!(
        trap,
        Some(wasmtime::Trap::UnreachableCodeReached),
        "{error:?}"
    );
    let message = format!("{error:#}");
    assert!(
        message.contains("guest export dequantize") && message.contains("blk.0.attn_q.weight"),
        "{message}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn guest_routing_agrees_with_the_host_on_every_offset(shards in 1u32..=6, offsets in prop::collection::vec(any::<u64>(), 200)) {
        let opened = OpenModel::open(&model(GEMMA)).unwrap();
        let plan = opened.plan(&PlanOptions { shards: Some(shards), ..PlanOptions::default() }).unwrap();
        let router = Router::new(&plan);
        let end = plan.tensors.iter().map(|t| t.logical_offset + t.span.bytes).max().unwrap();
        let store = WeightStore::new(plan.clone(), LoadMode::Mmap).unwrap();
        let (mut guest, _) = store.instantiate().unwrap();
        // Random offsets over (and a little past) the data, and every route's edges.
        let mut probes: Vec<u64> = offsets.iter().map(|o| o % (end + 4096)).collect();
        for r in router.routes() {
            probes.extend([r.logical_start, r.logical_end - 1, r.logical_end, r.logical_start.saturating_sub(1)]);
        }
        for x in probes {
            prop_assert_eq!(guest.route(x).unwrap(), router.route(x), "offset {}", x);
        }
    }
}

/// A call of one weight-reading export on a guest.
type WeightRead = Box<dyn Fn(&mut GuestInstance) -> anyhow::Result<()>>;

#[test]
fn truncating_the_model_under_a_running_guest_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doomed.gguf");
    std::fs::copy(model(SMOLLM2), &path).unwrap();
    let opened = OpenModel::open(&path).unwrap();
    let plan = opened
        .plan(&PlanOptions {
            shards: Some(2),
            ..PlanOptions::default()
        })
        .unwrap();
    drop(opened);
    let store = WeightStore::new(plan, LoadMode::Mmap).unwrap();
    // The last tensor with rows of a type the guest has kernels for (output_norm
    // is F32, one row): every weight-reading export can reach it.
    let last = store.plan().tensors.len() - 1;
    let row_len = store.plan().tensors[last].span.dims[0] as usize;
    let x = vec![1.0f32; row_len];
    // Each export on a fresh instance, so no page is already resident from an
    // earlier export's read.
    let exports: [(&str, WeightRead); 4] = [
        (
            "xxh64_tensor",
            Box::new(move |g| g.xxh64_tensor(last).map(drop)),
        ),
        (
            "stream_tensor",
            Box::new(move |g| g.stream_tensor(last).map(drop)),
        ),
        (
            "dequantize",
            Box::new(move |g| g.dequantize(last, 0, 1).map(drop)),
        ),
        (
            "matvec",
            Box::new(move |g| g.matvec(last, 0, 1, &x).map(drop)),
        ),
    ];
    let mut guests: Vec<GuestInstance> = exports
        .iter()
        .map(|_| store.instantiate().unwrap().0)
        .collect();
    // Cut the file to half while its pages are mapped into the shard memories.
    let size = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    for ((export, call), guest) in exports.iter().zip(&mut guests) {
        let error = format!("{:#}", call(guest).unwrap_err());
        assert!(
            error.contains("model file changed") && error.contains(export),
            "{export}: {error}"
        );
    }
    // The host's own reads of the file fail cleanly too.
    assert!(store.host_xxh64(last).is_err());
    // Tensors in the part that remains still verify.
    assert_eq!(
        guests[0].xxh64_tensor(0).unwrap(),
        store.host_xxh64(0).unwrap()
    );
}
