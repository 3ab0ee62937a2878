//! Dequantization is bit-exact with gguf-py's numpy reference, on committed
//! random vectors of every supported type and on real tensors of both models.

use std::collections::BTreeMap;

use shardload_gguf::{GgmlType, GgufFile, TensorInfo};
use shardload_quant::{DequantizeError, SUPPORTED, dequantize};
use shardload_suite::{
    GEMMA, SMOLLM2, check_matvec, gguf_ref, matvec_references, model, root, test_vector,
};

fn data<'a>(file: &'a GgufFile, t: &TensorInfo) -> &'a [u8] {
    let start = (file.header.data_offset + t.offset) as usize;
    &file.bytes()[start..start + t.bytes as usize]
}

fn f32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn every_supported_type_is_bit_exact_on_the_committed_vectors() {
    let file = GgufFile::open(root().join("tests/vectors/quants.gguf")).unwrap();
    let by_name: BTreeMap<&str, &TensorInfo> = file
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for &ty in SUPPORTED {
        let quantized = by_name[ty.name()];
        let expected = f32s(data(&file, by_name[format!("{}.f32", ty.name()).as_str()]));
        let mut out = vec![0f32; expected.len()];
        dequantize(ty, data(&file, quantized), &mut out).unwrap();
        assert_eq!(bits(&out), expected, "{}", ty.name());
    }
}

fn real_tensors_are_bit_exact(name: &str) {
    let path = model(name);
    let file = GgufFile::open(&path).unwrap();
    let mut first_of_type: BTreeMap<&str, &TensorInfo> = BTreeMap::new();
    for t in file.tensors() {
        first_of_type.entry(t.ty.name()).or_insert(t);
    }
    let rows_of = |t: &TensorInfo| 4.min(t.dims[1..].iter().product::<u64>()) as usize;
    let spec = |t: &TensorInfo| format!("{}:0:{}", t.name, rows_of(t));
    let mut args = vec!["dequantize".to_string(), path.to_str().unwrap().to_string()];
    args.extend(first_of_type.values().map(|t| spec(t)));
    let reference = gguf_ref(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for (ty, t) in first_of_type {
        let hex = reference[&spec(t)].as_str().unwrap();
        let expected: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let rows = rows_of(t);
        let row_bytes = (t.bytes / t.dims[1..].iter().product::<u64>()) as usize;
        let mut out = vec![0f32; rows * t.dims[0] as usize];
        dequantize(t.ty, &data(&file, t)[..rows * row_bytes], &mut out).unwrap();
        assert_eq!(bits(&out), f32s(&expected), "{ty} tensor {}", t.name);
    }
}

#[test]
fn smollm2_tensors_of_every_type_are_bit_exact() {
    real_tensors_are_bit_exact(SMOLLM2);
}

#[test]
fn gemma_tensors_of_every_type_are_bit_exact() {
    real_tensors_are_bit_exact(GEMMA);
}

#[test]
fn other_types_are_refused_by_name_never_wrong_numbers() {
    let error = dequantize(GgmlType::IQ2_XXS, &[0; 66], &mut [0.0; 256]).unwrap_err();
    assert_eq!(error, DequantizeError::Unsupported(GgmlType::IQ2_XXS));
    assert_eq!(error.to_string(), "unsupported type IQ2_XXS");
}

#[test]
fn partial_blocks_and_short_outputs_are_refused() {
    assert!(matches!(
        dequantize(GgmlType::Q4_0, &[0; 17], &mut [0.0; 32]),
        Err(DequantizeError::BadLength { .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q4_0, &[0; 18], &mut [0.0; 31]),
        Err(DequantizeError::BadLength { .. })
    ));
}

#[test]
fn matvec_is_within_the_stated_bounds_of_gguf_py_for_every_type() {
    let path = root().join("tests/vectors/quants.gguf");
    let file = GgufFile::open(&path).unwrap();
    let by_name: BTreeMap<&str, &TensorInfo> = file
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let x = test_vector(512);
    let rows: Vec<String> = SUPPORTED
        .iter()
        .flat_map(|ty| [0, 1].map(|r| format!("{}:{r}", ty.name())))
        .collect();
    let references = matvec_references(&path, &x, &rows);
    for &ty in SUPPORTED {
        let mut y = [0f32; 2];
        shardload_quant::matvec(ty, data(&file, by_name[ty.name()]), &x, &mut y).unwrap();
        for (r, &got) in y.iter().enumerate() {
            let reference = &references[&format!("{}:{r}", ty.name())];
            if let Err(e) = check_matvec(ty.name(), 512, got, reference) {
                panic!("{} row {r}: {e}", ty.name());
            }
        }
    }
}

#[test]
fn quantizing_x_matches_gguf_py_q8_0_bit_for_bit() {
    // Halves, exact ties and zeros exercise roundf's ties-away rule.
    let mut x = test_vector(256);
    x[..32].fill(0.0);
    for (j, v) in x[32..64].iter_mut().enumerate() {
        *v = j as f32 * 0.5 - 8.0;
    }
    let hex: String = x
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect();
    let reference = gguf_ref(&["q8", &hex]);
    let input = shardload_quant::quantize_input(&x);
    let expected_q: Vec<i8> = reference["q"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i8)
        .collect();
    let expected_d: Vec<u32> = reference["d"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v.as_f64().unwrap() as f32).to_bits())
        .collect();
    assert_eq!(input.q, expected_q);
    assert_eq!(
        input
            .groups
            .iter()
            .map(|g| g.d.to_bits())
            .collect::<Vec<_>>(),
        expected_d
    );
    for (g, group) in input.groups.iter().enumerate() {
        let q = &expected_q[g * 32..(g + 1) * 32];
        let sum = |h: &[i8]| h.iter().map(|&v| i32::from(v)).sum::<i32>();
        assert_eq!(group.half_sums, [sum(&q[..16]), sum(&q[16..])]);
    }
}
