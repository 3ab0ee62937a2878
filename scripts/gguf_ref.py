#!/usr/bin/env python3
"""Independent references from llama.cpp's gguf-py (PyPI `gguf`), for tests.

shardload's own numbers are checked against these, never against themselves.

  gguf_ref.py tensors MODEL.gguf            tensor table as JSON (name, type, dims, bytes, data_offset)
  gguf_ref.py quant-sizes                   gguf-py's GGML_QUANT_SIZES as JSON
  gguf_ref.py split SRC.gguf OUT.gguf N     a llama.cpp-style split set of SRC, N tensors per file
  gguf_ref.py xxh64 MODEL.gguf              XXH64 (seed 0, python-xxhash) of every tensor's bytes
  gguf_ref.py dequantize MODEL.gguf NAME:FIRST:ROWS...  gguf-py's f32 of those rows of each tensor (hex)
  gguf_ref.py quant-vectors OUT.gguf        random blocks of every kernel type + gguf-py's f32 of them
  gguf_ref.py q8 X_HEX                      gguf-py's Q8_0 quantization of f32 x: quants and f16 scales
  gguf_ref.py matvec MODEL.gguf X_HEX NAME:ROW...  f64 references for y = W x of those rows (see matvec())
"""
import json
import sys
from pathlib import Path

try:
    import gguf
except ImportError:
    sys.exit("gguf_ref.py: the python package gguf is missing: pip install -r scripts/requirements.txt")


def tensors(path):
    reader = gguf.GGUFReader(path)
    return [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "bytes": int(t.n_bytes),
            "data_offset": int(t.data_offset),
        }
        for t in reader.tensors
    ]


def quant_sizes():
    return {
        t.name: {"id": int(t.value), "block_size": block, "type_size": size}
        for t, (block, size) in gguf.GGML_QUANT_SIZES.items()
    }


def split(src, out, tensors_per_file):
    """Copies SRC into a split set the way llama.cpp's tools write one."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(out, arch, split_max_tensors=tensors_per_file)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return [str(p) for p in writer.format_shard_names(Path(out))]


def xxh64(path):
    import xxhash

    reader = gguf.GGUFReader(path)
    return {t.name: xxhash.xxh64_hexdigest(t.data.tobytes(), seed=0) for t in reader.tensors}


def dequantize(path, specs):
    import numpy as np
    from gguf.quants import dequantize as reference

    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    result = {}
    for spec in specs:
        name, first, rows = spec.rsplit(":", 2)
        tensor = tensors[name]
        first, rows = int(first), int(rows)
        data = np.ascontiguousarray(tensor.data.reshape(-1, tensor.data.shape[-1])[first:first + rows])
        result[spec] = reference(data, tensor.tensor_type).astype(np.float32).tobytes().hex()
    return result


def q8(x_hex):
    import numpy as np
    from gguf.quants import quantize

    x = np.frombuffer(bytes.fromhex(x_hex), dtype=np.float32).reshape(1, -1)
    blocks = quantize(x, gguf.GGMLQuantizationType.Q8_0).reshape(-1, 34)
    return {
        "q": blocks[:, 2:].view(np.int8).reshape(-1).tolist(),
        "d": blocks[:, :2].copy().view(np.float16).astype(np.float64).reshape(-1).tolist(),
    }


# Byte offset of the f16 min field (`m` or `dmin`) in one block of the types that have one.
MIN_FIELDS = {"Q4_1": 2, "Q5_1": 2, "Q2_K": 82, "Q4_K": 2, "Q5_K": 2}


def matvec(path, x_hex, specs):
    """For each row: the f64 products of gguf-py's dequantized row with x (and
    sum_j |w_j x_j|, which bounds a float dot's rounding) and
    with x's Q8_0 round trip through gguf-py (what an integer matvec sees),
    the magnitude sum_j (|s_j| + |m_j|) |x~_j| that bounds its rounding, where
    the weight w = s + m splits into scaled quant s and block min m (found by
    dequantizing again with the min field zeroed), and the error that quantizing x
    may add, sum_j |w_j| 0.5625 d_j with d_j = max|x| / 127 over j's 32-group."""
    import numpy as np
    from gguf.quants import dequantize as reference, quantize

    x = np.frombuffer(bytes.fromhex(x_hex), dtype=np.float32)
    q8 = gguf.GGMLQuantizationType.Q8_0
    x_q8 = reference(quantize(x.reshape(1, -1), q8), q8).reshape(-1).astype(np.float64)
    step = np.repeat(np.abs(x.reshape(-1, 32)).max(axis=1).astype(np.float64) / 127, 32)
    x = x.astype(np.float64)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    result = {}
    for spec in specs:
        name, row = spec.rsplit(":", 1)
        tensor = tensors[name]
        raw = np.array(tensor.data.reshape(-1, tensor.data.shape[-1])[int(row):int(row) + 1])
        qtype = tensor.tensor_type
        w = reference(raw, qtype).astype(np.float32).reshape(-1).astype(np.float64)
        if qtype.name in MIN_FIELDS:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            blocks = raw.reshape(-1, size).copy()
            at = MIN_FIELDS[qtype.name]
            blocks[:, at:at + 2] = 0
            s = reference(blocks.reshape(1, -1), qtype).astype(np.float32).reshape(-1).astype(np.float64)
        else:
            s = w
        result[spec] = {
            "dot": float(w @ x),
            "magnitude": float(np.abs(w) @ np.abs(x)),
            "dot_q8": float(w @ x_q8),
            "magnitude_q8": float((np.abs(s) + np.abs(w - s)) @ np.abs(x_q8)),
            "quantization_bound": float(np.abs(w) @ (0.5625 * step)),
        }
    return result


# Byte offsets of the f16 scale fields in one block of each type: random bytes
# there could be NaN or infinity, so they get random finite halves instead.
SCALE_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ4_NL": [0], "IQ4_XS": [0],
}


def quant_vectors(out):
    """Two rows of 512 elements per type, quantized bytes next to gguf-py's f32."""
    import numpy as np
    from gguf.quants import dequantize as reference

    rng = np.random.default_rng(20261124)
    writer = gguf.GGUFWriter(out, "vectors")
    for name in ["F32", "F16", "BF16", *SCALE_FIELDS]:
        qtype = gguf.GGMLQuantizationType[name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = 2 * 512 // block
        if name in ("F32", "F16", "BF16"):
            values = rng.normal(0, 2, size=(2, 512)).astype(np.float32)
            raw = gguf.quants.quantize(values, qtype).view(np.uint8).reshape(2, -1)
        else:
            raw = rng.integers(0, 256, size=(blocks, size), dtype=np.uint8)
            for at in SCALE_FIELDS[name]:
                halves = (rng.normal(0, 0.05, size=blocks)).astype(np.float16)
                raw[:, at:at + 2] = halves.view(np.uint8).reshape(blocks, 2)
            raw = raw.reshape(2, -1)
        expected = reference(raw, qtype).astype(np.float32)
        writer.add_tensor(name, raw, raw_dtype=qtype)
        writer.add_tensor(name + ".f32", expected)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv):
    if len(argv) < 1:
        sys.exit(__doc__)
    command, args = argv[0], argv[1:]
    if command == "tensors" and len(args) == 1:
        result = tensors(args[0])
    elif command == "quant-sizes" and not args:
        result = quant_sizes()
    elif command == "split" and len(args) == 3:
        result = split(args[0], args[1], int(args[2]))
    elif command == "xxh64" and len(args) == 1:
        result = xxh64(args[0])
    elif command == "dequantize" and len(args) >= 2:
        result = dequantize(args[0], args[1:])
    elif command == "q8" and len(args) == 1:
        result = q8(args[0])
    elif command == "matvec" and len(args) >= 3:
        result = matvec(args[0], args[1], args[2:])
    elif command == "quant-vectors" and len(args) == 1:
        result = quant_vectors(args[0])
    else:
        sys.exit(__doc__)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
