// Dumps a sample of llama.cpp's handcrafted GGUF test files (tests/test-gguf.cpp)
// with llama.cpp's own verdict on each. Built and run by scripts/llama-gguf-corpus
// against the vendored llama.cpp's ggml; never in CI.
//
//   llama-gguf-corpus OUT_DIR SEED...
//
// Writes OUT_DIR/SEED/CLASS.gguf for every seed and every file class of
// test_handcrafted_file(), OUT_DIR/manifest.json (one entry per file) and
// OUT_DIR/ggml-types.json (ggml's block and type size of every type id).
//
// The generator is test-gguf.cpp's own get_handcrafted_file(), included below
// with its main() renamed, so the files are byte for byte the ones its test
// reads. Each file gets two verdicts from gguf_init_from_file():
//   header_only: params.ctx = NULL, which reads the header and the tensor infos
//                (what test-gguf asks for the HEADER_, KV_ and TENSORS_ classes);
//   with_data:   params.ctx = &ctx, no_alloc = false, which also reads every
//                tensor's data (what test-gguf asks for the DATA_ classes).

#define main test_gguf_main
#include "test-gguf.cpp"
#undef main

#include <sys/stat.h>

// The classes in the order test_handcrafted_file() runs them.
static const handcrafted_file_type CLASSES[] = {
    HANDCRAFTED_HEADER_BAD_MAGIC,
    HANDCRAFTED_HEADER_BAD_VERSION_0,
    HANDCRAFTED_HEADER_BAD_VERSION_1,
    HANDCRAFTED_HEADER_BAD_VERSION_FUTURE,
    HANDCRAFTED_HEADER_BAD_N_KV,
    HANDCRAFTED_HEADER_BAD_N_TENSORS,
    HANDCRAFTED_HEADER_EMPTY,

    HANDCRAFTED_KV_BAD_KEY_SIZE,
    HANDCRAFTED_KV_EMPTY_KEY,
    HANDCRAFTED_KV_BAD_TYPE,
    HANDCRAFTED_KV_DUPLICATE_KEY,
    HANDCRAFTED_KV_BAD_ALIGN,
    HANDCRAFTED_KV_WRONG_TYPE_ALIGN,
    HANDCRAFTED_KV_SUCCESS,

    HANDCRAFTED_TENSORS_BAD_NAME_SIZE,
    HANDCRAFTED_TENSORS_BAD_N_DIMS,
    HANDCRAFTED_TENSORS_BAD_SHAPE,
    HANDCRAFTED_TENSORS_ZERO_DIM,
    HANDCRAFTED_TENSORS_NE_TOO_BIG,
    HANDCRAFTED_TENSORS_NBYTES_TOO_BIG,
    HANDCRAFTED_TENSORS_NBYTES_PAD_WRAP,
    HANDCRAFTED_TENSORS_BAD_TYPE,
    HANDCRAFTED_TENSORS_BAD_OFFSET,
    HANDCRAFTED_TENSORS_DUPLICATE_NAME,
    HANDCRAFTED_TENSORS_BAD_ALIGN,
    HANDCRAFTED_TENSORS_INCONSISTENT_ALIGN,
    HANDCRAFTED_TENSORS_SUCCESS,
    HANDCRAFTED_TENSORS_CUSTOM_ALIGN,

    HANDCRAFTED_DATA_NOT_ENOUGH_DATA,
    HANDCRAFTED_DATA_BAD_ALIGN,
    HANDCRAFTED_DATA_INCONSISTENT_ALIGN,
    HANDCRAFTED_DATA_MEM_SIZE_OVERFLOW,
    HANDCRAFTED_DATA_SUCCESS,
    HANDCRAFTED_DATA_CUSTOM_ALIGN,
};

// What ggml logged during the last load: its reason for refusing a file.
static std::string g_log;

static void capture_log(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_CONT) {
        g_log += text;
    }
}

static std::string json_string(const std::string & s) {
    std::string out = "\"";
    for (const unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += char(c);
        } else if (c < 0x20 || c >= 0x7f) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            out += esc;
        } else {
            out += char(c);
        }
    }
    return out + "\"";
}

static gguf_context * load(const std::string & path, bool with_data, ggml_context ** ctx) {
    *ctx = nullptr;
    gguf_init_params params = {
        /*no_alloc =*/ false,
        /*ctx      =*/ with_data ? ctx : nullptr,
    };
    return gguf_init_from_file(path.c_str(), params);
}

// What llama.cpp read: keys with their types, and the tensor table.
static std::string describe(const gguf_context * g) {
    std::string out = "\"version\": " + std::to_string(gguf_get_version(g));
    out += ", \"alignment\": " + std::to_string(gguf_get_alignment(g));
    out += ", \"data_offset\": " + std::to_string(gguf_get_data_offset(g));
    out += ", \"kv\": [";
    for (int64_t i = 0; i < gguf_get_n_kv(g); ++i) {
        const gguf_type type = gguf_get_kv_type(g, i);
        std::string t = gguf_type_name(type);
        if (type == GGUF_TYPE_ARRAY) {
            t += std::string(":") + gguf_type_name(gguf_get_arr_type(g, i));
        }
        // Keys are my_key_N or general.alignment: nothing to escape.
        out += std::string(i ? ", " : "") + "[\"" + gguf_get_key(g, i) + "\", \"" + t + "\"]";
    }
    out += "], \"tensors\": [";
    for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
        const int64_t * ne = gguf_get_tensor_ne(g, i);
        char entry[512];
        snprintf(entry, sizeof(entry),
                 "%s{\"name\": \"%s\", \"type\": %d, \"ne\": [%lld, %lld, %lld, %lld], \"offset\": %zu, \"size\": %zu}",
                 i ? ", " : "", gguf_get_tensor_name(g, i), int(gguf_get_tensor_type(g, i)),
                 (long long) ne[0], (long long) ne[1], (long long) ne[2], (long long) ne[3],
                 gguf_get_tensor_offset(g, i), gguf_get_tensor_size(g, i));
        out += entry;
    }
    return out + "]";
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s OUT_DIR SEED...\n", argv[0]);
        return 2;
    }
    ggml_log_set(capture_log, nullptr);
    const std::string out = argv[1];

    FILE * types = fopen((out + "/ggml-types.json").c_str(), "w");
    GGML_ASSERT(types);
    fprintf(types, "{\n  \"source\": \"ggml_type_name, ggml_blck_size and ggml_type_size of the vendored llama.cpp\",\n  \"types\": [\n");
    bool first = true;
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        if (ggml_type_size(ggml_type(t)) == 0) {
            continue; // a removed id
        }
        fprintf(types, "%s    {\"id\": %d, \"name\": \"%s\", \"block_size\": %lld, \"type_size\": %zu}",
                first ? "" : ",\n", t, ggml_type_name(ggml_type(t)),
                (long long) ggml_blck_size(ggml_type(t)), ggml_type_size(ggml_type(t)));
        first = false;
    }
    fprintf(types, "\n  ]\n}\n");
    fclose(types);

    FILE * manifest = fopen((out + "/manifest.json").c_str(), "w");
    GGML_ASSERT(manifest);
    fprintf(manifest, "{\n  \"source\": \"llama.cpp tests/test-gguf.cpp get_handcrafted_file(seed, class), written by scripts/llama-gguf-corpus\",\n");
    fprintf(manifest, "  \"verdicts\": \"gguf_init_from_file with params.ctx = NULL (header_only) and with params.ctx set, no_alloc = false (with_data); test_gguf_expects is test-gguf's expect_context_not_null(class)\",\n");
    fprintf(manifest, "  \"files\": [\n");
    first = true;
    for (int a = 2; a < argc; ++a) {
        const unsigned int seed = (unsigned int) std::stoul(argv[a]);
        const std::string dir = out + "/" + std::to_string(seed);
        mkdir(dir.c_str(), 0755);
        for (const handcrafted_file_type hft : CLASSES) {
            const std::string name = handcrafted_file_type_name(hft);
            const std::string rel = std::to_string(seed) + "/" + name + ".gguf";
            FILE * file = get_handcrafted_file(seed, hft);
            GGML_ASSERT(file);
            const std::vector<uint8_t> bytes = read_file_to_buffer(file);
            fclose(file);
            FILE * f = fopen((out + "/" + rel).c_str(), "wb");
            GGML_ASSERT(f && fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
            fclose(f);

            ggml_context * ctx = nullptr;
            g_log.clear();
            gguf_context * header_only = load(out + "/" + rel, false, &ctx);
            const std::string header_log = g_log;
            g_log.clear();
            gguf_context * with_data = load(out + "/" + rel, true, &ctx);
            const std::string data_log = g_log;
            const gguf_context * read = with_data ? with_data : header_only;
            fprintf(manifest,
                    "%s    {\"file\": \"%s\", \"class\": \"%s\", \"seed\": %u, \"bytes\": %zu, "
                    "\"test_gguf_expects\": %s, \"llama_cpp\": {\"header_only\": %s, \"with_data\": %s}",
                    first ? "" : ",\n", rel.c_str(), name.c_str(), seed, bytes.size(),
                    expect_context_not_null(hft) ? "true" : "false",
                    header_only ? "true" : "false", with_data ? "true" : "false");
            if (!header_only || !with_data) {
                // What ggml logged while refusing, one line per "; ".
                const std::string & log = header_only ? data_log : header_log;
                std::string why;
                for (const char c : log) {
                    why += c == '\n' ? std::string("; ") : std::string(1, c);
                }
                while (why.size() >= 2 && why.compare(why.size() - 2, 2, "; ") == 0) {
                    why.resize(why.size() - 2);
                }
                fprintf(manifest, ", \"llama_cpp_error\": %s", json_string(why).c_str());
            }
            if (read) {
                fprintf(manifest, ", %s", describe(read).c_str());
            }
            fprintf(manifest, "}");
            first = false;
            if (header_only) {
                gguf_free(header_only);
            }
            if (with_data) {
                gguf_free(with_data);
                ggml_free(ctx);
            }
        }
    }
    fprintf(manifest, "\n  ]\n}\n");
    fclose(manifest);
    return 0;
}
