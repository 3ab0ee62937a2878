//! ggml tensor types: ids as stored in GGUF, names as gguf-py spells them, and
//! the block layout that gives a tensor's byte size.

/// Declares the type table once: variant, id, gguf-py name, block size, type size.
macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $name:literal, $block:literal, $size:literal;)*) => {
        /// A ggml tensor type that current llama.cpp (and gguf-py) can write.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum GgmlType {
            $(#[doc = concat!("`", $name, "`: ", $block, " elements in ", $size, " bytes.")] $variant,)*
        }

        impl GgmlType {
            /// Every type, in id order.
            pub fn all() -> &'static [GgmlType] {
                &[$(GgmlType::$variant,)*]
            }

            /// The id GGUF stores for this type.
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id,)* }
            }

            /// The name gguf-py and llama.cpp print (`Q4_K`, `F32`).
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name,)* }
            }

            /// Elements per block.
            pub fn block_size(self) -> u64 {
                match self { $(GgmlType::$variant => $block,)* }
            }

            /// Bytes per block.
            pub fn type_size(self) -> u64 {
                match self { $(GgmlType::$variant => $size,)* }
            }
        }
    };
}

ggml_types! {
    // Sizes are ggml's (the block structs in ggml-common.h): ggml writes and
    // reads the files. gguf-py differs on two, checked by the type-table tests:
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    Q8_1 = 9, "Q8_1", 32, 36; // 2 f16 + 32 i8; gguf-py 0.19 says 40
    Q2_K = 10, "Q2_K", 256, 84;
    Q3_K = 11, "Q3_K", 256, 110;
    Q4_K = 12, "Q4_K", 256, 144;
    Q5_K = 13, "Q5_K", 256, 176;
    Q6_K = 14, "Q6_K", 256, 210;
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", 256, 54;
    TQ2_0 = 35, "TQ2_0", 256, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
    NVFP4 = 40, "NVFP4", 64, 36;
    Q1_0 = 41, "Q1_0", 128, 18;
    Q2_0 = 42, "Q2_0", 64, 18; // f16 + 64 2-bit quants; gguf-py 0.19 lacks it
}

/// The types shardload computes with: its guest kernels and its native
/// oracle both implement exactly these (dequantize and matvec), and each
/// refuses any other type by name. One list, read by both.
pub const KERNEL_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// Type ids ggml once used and has removed: files that use them are refused by name.
const REMOVED: &[(u32, &str)] = &[
    (4, "Q4_2"),
    (5, "Q4_3"),
    (31, "Q4_0_4_4"),
    (32, "Q4_0_4_8"),
    (33, "Q4_0_8_8"),
    (36, "IQ4_NL_4_4"),
    (37, "IQ4_NL_4_8"),
    (38, "IQ4_NL_8_8"),
];

impl GgmlType {
    /// The type with this id, or why there is none.
    pub fn from_id(id: u32) -> Result<GgmlType, String> {
        if let Some(ty) = GgmlType::all().iter().find(|t| t.id() == id) {
            return Ok(*ty);
        }
        match REMOVED.iter().find(|(removed, _)| *removed == id) {
            Some((_, name)) => Err(format!(
                "type id {id} is {name}, which ggml has removed; re-quantize the model"
            )),
            None => Err(format!("unknown ggml type id {id}")),
        }
    }

    /// The type gguf-py calls `name`.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::all().iter().copied().find(|t| t.name() == name)
    }

    /// Whether elements are stored one by one as floats (F32, F16, BF16, F64)
    /// rather than in quantized blocks: kernels convert them element by
    /// element and dot them with x itself instead of its quantized form.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::F64
        )
    }
}

/// Bytes of a tensor of this type and shape (dims ne0 first): `None` if the
/// row length is not a whole number of blocks or the size overflows.
pub fn tensor_bytes(ty: GgmlType, dims: &[u64]) -> Option<u64> {
    let (&row, rest) = dims.split_first()?;
    if !row.is_multiple_of(ty.block_size()) {
        return None;
    }
    let row_bytes = (row / ty.block_size()).checked_mul(ty.type_size())?;
    rest.iter()
        .try_fold(row_bytes, |bytes, &d| bytes.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_round_trip() {
        for &ty in GgmlType::all() {
            assert_eq!(GgmlType::from_id(ty.id()), Ok(ty));
            assert_eq!(GgmlType::from_name(ty.name()), Some(ty));
        }
    }

    #[test]
    fn removed_types_are_refused_by_name() {
        let error = GgmlType::from_id(4).unwrap_err();
        assert!(
            error.contains("Q4_2") && error.contains("removed"),
            "{error}"
        );
        assert!(GgmlType::from_id(9999).unwrap_err().contains("unknown"));
    }

    #[test]
    fn q8_1_and_the_newest_types_have_ggml_block_sizes() {
        // ggml-common.h: block_q8_1 {2 x ggml_half, int8_t qs[32]},
        // block_nvfp4 {uint8_t d[4], qs[32]}, block_q1_0 {ggml_half, qs[16]},
        // block_q2_0 {ggml_half, qs[16]}.
        let sizes = [
            (GgmlType::Q8_1, 9, 32, 2 * 2 + 32),
            (GgmlType::NVFP4, 40, 64, 64 / 16 + 64 / 2),
            (GgmlType::Q1_0, 41, 128, 2 + 128 / 8),
            (GgmlType::Q2_0, 42, 64, 2 + 64 / 4),
        ];
        for (ty, id, block, size) in sizes {
            assert_eq!(
                (ty.id(), ty.block_size(), ty.type_size()),
                (id, block, size),
                "{ty:?}"
            );
        }
    }

    #[test]
    fn tensor_bytes_follow_blocks_and_refuse_partial_blocks_and_overflow() {
        assert_eq!(
            tensor_bytes(GgmlType::Q4_K, &[8192, 1024]),
            Some(8192 / 256 * 144 * 1024)
        );
        assert_eq!(tensor_bytes(GgmlType::Q4_0, &[33]), None);
        assert_eq!(tensor_bytes(GgmlType::F32, &[u64::MAX / 2, 3]), None);
        assert_eq!(tensor_bytes(GgmlType::F32, &[]), None);
    }
}
