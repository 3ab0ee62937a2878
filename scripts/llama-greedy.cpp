// Greedy generation with llama.cpp, printing the numbers behind every choice.
// Compiled and run by scripts/llama-reference (never in CI), against the
// llama.cpp that scripts/build-llama-cpp builds.
//
//   llama-greedy -m MODEL [-n 32] [-c 2048] [-k 10] [--logits-out FILE] ID...
//
// The prompt is given as token ids (so the reference and shardload start from
// identical tokens), decoded as one batch (n_batch >= prompt length; the
// physical ubatch stays llama.cpp's default, as in llama-simple), then up to N
// tokens are chosen greedily one at a time (llama.cpp's greedy sampler),
// stopping after an end-of-generation token. CPU only; every other context
// parameter is llama.cpp's default, like examples/simple.
//
// Prints one JSON object on stdout:
//   {"n_vocab": V, "n_ctx": C, "n_batch": B, "n_ubatch": U, "system_info": "...",
//    "prompt_text": "hex of the prompt's token texts",
//    "steps": [{"id": chosen, "top": [[id, logit], ...k], "gap": top1 - top2,
//               "piece": "hex of the token's text"}, ...],
//    "stop": "eog" | "length"}
// steps[0] is the choice made from the logits at the last prompt position,
// steps[i] the one made after feeding steps[i-1].id. With --logits-out the
// whole logits vector at the last prompt position is written to FILE as
// float32 little-endian.

#include "llama.h"

#include <algorithm>
#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

static void usage() {
    fprintf(stderr, "usage: llama-greedy -m MODEL [-n N] [-c N_CTX] [-k TOP] [--logits-out FILE] ID...\n");
    exit(2);
}

// Shortest decimal that reads back as the same float.
static std::string fmt_float(float v) {
    char buf[64];
    for (int prec = 6; prec <= 9; ++prec) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtof(buf, nullptr) == v) break;
    }
    return buf;
}

static std::string json_string(const char * s) {
    std::string out = "\"";
    for (const char * p = s; *p; ++p) {
        unsigned char c = (unsigned char) *p;
        if (c == '"' || c == '\\') { out += '\\'; out += (char) c; }
        else if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); out += b; }
        else out += (char) c;
    }
    return out + "\"";
}

static std::string hex(const std::string & s) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) { out += digits[c >> 4]; out += digits[c & 15]; }
    return out;
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");

    std::string model_path, logits_out;
    int n_predict = 32, n_ctx = 2048, top_k = 10;
    std::vector<llama_token> prompt;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> const char * { if (i + 1 >= argc) usage(); return argv[++i]; };
        if (a == "-m") model_path = next();
        else if (a == "-n") n_predict = atoi(next());
        else if (a == "-c") n_ctx = atoi(next());
        else if (a == "-k") top_k = atoi(next());
        else if (a == "--logits-out") logits_out = next();
        else if (!a.empty() && a[0] != '-') prompt.push_back((llama_token) atoi(a.c_str()));
        else usage();
    }
    if (model_path.empty() || prompt.empty()) usage();
    const int n_prompt = (int) prompt.size();

    llama_log_set([](enum ggml_log_level level, const char * text, void *) {
        if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
    }, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;  // CPU only
    mparams.progress_callback = [](float, void *) { return true; };  // no progress dots
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (!model) { fprintf(stderr, "unable to load %s\n", model_path.c_str()); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    for (llama_token t : prompt) {
        if (t < 0 || t >= n_vocab) { fprintf(stderr, "token %d out of range\n", t); return 1; }
    }
    if (n_prompt + n_predict > n_ctx) { fprintf(stderr, "prompt + n exceeds n_ctx %d\n", n_ctx); return 1; }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_ctx;
    cparams.n_batch = std::max<uint32_t>(cparams.n_batch, n_prompt);
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) { fprintf(stderr, "failed to create the llama_context\n"); return 1; }

    llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    llama_batch_ext * batch = llama_batch_ext_init(ctx);
    auto set_tokens = [&](const llama_token * tokens, int n, llama_pos pos0) {
        llama_batch_ext_clear(batch);
        for (int i = 0; i < n; ++i) {
            const int32_t idx = llama_batch_ext_add_token(batch, 0, tokens[i]);
            if (idx < 0) { fprintf(stderr, "batch full\n"); exit(1); }
            const llama_pos pos = pos0 + i;
            llama_batch_ext_set_pos(batch, idx, &pos);
        }
        llama_batch_ext_set_output_logits(batch, n - 1, true);
    };

    std::string prompt_text;  // the prompt as llama-simple prints it
    for (llama_token t : prompt) {
        char buf[256];
        int n = llama_token_to_piece(vocab, t, buf, sizeof buf, 0, true);
        if (n < 0) { fprintf(stderr, "token_to_piece failed\n"); return 1; }
        prompt_text.append(buf, n);
    }

    std::string steps;
    const char * stop = "length";
    std::vector<int> order(n_vocab);
    set_tokens(prompt.data(), n_prompt, 0);
    int n_pos = 0, n_tokens = n_prompt;
    for (int step = 0; step < n_predict; ++step) {
        if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) { fprintf(stderr, "decode failed\n"); return 1; }
        n_pos += n_tokens;
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (step == 0 && !logits_out.empty()) {
            FILE * f = fopen(logits_out.c_str(), "wb");
            if (!f || fwrite(logits, sizeof(float), n_vocab, f) != (size_t) n_vocab || fclose(f)) {
                fprintf(stderr, "cannot write %s\n", logits_out.c_str()); return 1;
            }
        }
        // top-k by logit, ties by lower id (llama.cpp's greedy sampler keeps the first maximum)
        std::iota(order.begin(), order.end(), 0);
        const int k = std::min(top_k, n_vocab);
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
            return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
        });
        const llama_token id = llama_sampler_sample(smpl, ctx, -1);
        if (id != order[0]) fprintf(stderr, "warning: step %d: sampler chose %d, argmax is %d\n", step, id, order[0]);

        char buf[256];
        int n = llama_token_to_piece(vocab, id, buf, sizeof buf, 0, true);
        if (n < 0) { fprintf(stderr, "token_to_piece failed\n"); return 1; }

        std::string s = "{\"id\": " + std::to_string(id) + ", \"top\": [";
        for (int i = 0; i < k; ++i) {
            s += (i ? ", [" : "[") + std::to_string(order[i]) + ", " + fmt_float(logits[order[i]]) + "]";
        }
        s += "], \"gap\": " + fmt_float(logits[order[0]] - logits[order[1]]);
        s += ", \"piece\": \"" + hex(std::string(buf, n)) + "\"}";
        steps += (step ? ", " : "") + s;

        if (llama_vocab_is_eog(vocab, id)) { stop = "eog"; break; }
        llama_token next = id;
        set_tokens(&next, 1, n_pos);
        n_tokens = 1;
    }

    printf("{\"n_vocab\": %d, \"n_ctx\": %u, \"n_batch\": %u, \"n_ubatch\": %u, \"system_info\": %s, "
           "\"prompt_text\": \"%s\", \"steps\": [%s], \"stop\": \"%s\"}\n",
           n_vocab, llama_n_ctx(ctx), llama_n_batch(ctx), llama_n_ubatch(ctx),
           json_string(llama_print_system_info()).c_str(), hex(prompt_text).c_str(), steps.c_str(), stop);

    llama_batch_ext_free(batch);
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
