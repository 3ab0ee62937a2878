// Token ids of many texts from one vocabulary load, as llama-tokenize gives
// them one text at a time: BOS (and EOS) as the model says
// (llama_vocab_get_add_bos), special tokens parsed and not. Compiled and run by
// scripts/llama-reference (never in CI), against the llama.cpp that
// scripts/build-llama-cpp builds.
//
//   llama-tokenize-cases MODEL CASES
//
// CASES holds the texts as (u32 little-endian length, bytes)...; prints one
// JSON line per text: {"ids": [...], "ids_no_special": [...]}.

#include "llama.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

static std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special, bool parse_special) {
    std::vector<llama_token> ids(text.size() + 8);
    int n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), (int32_t) ids.size(), add_special, parse_special);
    if (n < 0) {
        ids.resize(-n);
        n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), (int32_t) ids.size(), add_special, parse_special);
    }
    ids.resize(n);
    return ids;
}

static void print_ids(const std::vector<llama_token> & ids) {
    printf("[");
    for (size_t i = 0; i < ids.size(); i++) {
        printf(i ? ", %d" : "%d", ids[i]);
    }
    printf("]");
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: llama-tokenize-cases MODEL CASES\n");
        return 2;
    }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params params = llama_model_default_params();
    params.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], params);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const bool add_bos = llama_vocab_get_add_bos(vocab);

    std::ifstream in(argv[2], std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t at = 0;
    while (at + 4 <= data.size()) {
        uint32_t len = (uint8_t) data[at] | (uint8_t) data[at + 1] << 8 | (uint8_t) data[at + 2] << 16 | (uint32_t) (uint8_t) data[at + 3] << 24;
        at += 4;
        if (at + len > data.size()) {
            fprintf(stderr, "truncated cases file\n");
            return 1;
        }
        const std::string text = data.substr(at, len);
        at += len;
        printf("{\"ids\": ");
        print_ids(tokenize(vocab, text, add_bos, true));
        printf(", \"ids_no_special\": ");
        print_ids(tokenize(vocab, text, add_bos, false));
        printf("}\n");
    }
    llama_model_free(model);
    return 0;
}
