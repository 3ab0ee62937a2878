#!/usr/bin/env python3
"""Independent references from llama.cpp's gguf-py (PyPI `gguf`), for tests.

shardload's own numbers are checked against these, never against themselves.

  gguf_ref.py tensors MODEL.gguf            tensor table as JSON (name, type, dims, bytes, data_offset)
  gguf_ref.py quant-sizes                   gguf-py's GGML_QUANT_SIZES as JSON
  gguf_ref.py split SRC.gguf OUT.gguf N     a llama.cpp-style split set of SRC, N tensors per file
  gguf_ref.py xxh64 MODEL.gguf              XXH64 (seed 0, python-xxhash) of every tensor's bytes
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
    else:
        sys.exit(__doc__)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
