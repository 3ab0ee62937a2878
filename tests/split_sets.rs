//! A llama.cpp split set (written by gguf-py) plans like the file it was split from.

use shard_planner::{PlanOptions, Router};
use shardload_store::OpenModel;
use shardload_suite::{SMOLLM2, make_split, model};

#[test]
fn a_split_set_plans_to_the_same_tensors_sizes_and_logical_offsets_as_the_single_file() {
    let single = OpenModel::open(&model(SMOLLM2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = make_split(&model(SMOLLM2), dir.path(), 100);
    assert_eq!(files.len(), 3, "272 tensors at 100 per file");
    let split = OpenModel::open(&files[0]).unwrap();
    assert_eq!(split.layout.files.len(), 3);

    let options = PlanOptions {
        shards: Some(4),
        ..PlanOptions::default()
    };
    let (a, b) = (
        single.plan(&options).unwrap(),
        split.plan(&options).unwrap(),
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(
            (
                &x.span.name,
                &x.span.ty,
                &x.span.dims,
                x.span.bytes,
                x.logical_offset
            ),
            (
                &y.span.name,
                &y.span.ty,
                &y.span.dims,
                y.span.bytes,
                y.logical_offset
            )
        );
    }
    // Tensors of later files really live in those files, and route to their bytes there.
    assert!(b.tensors.iter().any(|t| t.span.file == 2));
    let router = Router::new(&b);
    for t in &b.tensors {
        let (shard, offset) = router.route(t.logical_offset).unwrap();
        assert_eq!((shard, offset), (t.shard, t.offset));
    }
    // A shard that spans two files is built from one extent per file.
    assert!(b.shards.iter().any(|s| s.extents.len() > 1));
}
