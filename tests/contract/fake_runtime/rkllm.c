/* A fake librkllmrt.so with known timings, for the runner's contract tests.
 *
 * Build: gcc -shared -fPIC -O2 [-DRKLLM_ABI_1_3 | -DRKLLM_ABI_1_2_0] [-DFAKE_VERSION='"1.2.1"']
 *            -o librkllmrt.so rkllm.c
 *
 * Behaviour (environment read at rkllm_init / rkllm_run):
 *   FAKE_PREFILL_MS            prefill time; the first token's callback comes this long after
 *                              rkllm_run starts (default 200)
 *   FAKE_DECODE_MS_PER_TOKEN   then one token callback every this many ms (default 20); the
 *                              deadlines are absolute, so sleep overshoot does not accumulate
 *   FAKE_MEMORY_MB             the memory it reports (default: this process's VmHWM)
 *   FAKE_TOOLKIT_VERSION       the toolkit version it claims the model was built with
 *   FAKE_DRIVER_VERSION, FAKE_PLATFORM   what the version line says (0.9.8, RK3588)
 *   RKLLM_LOG_LEVEL>=1         print the performance table after each run
 *   FAKE_INIT_CRASH            _exit(3) in rkllm_init right after the version line, unflushed
 *   FAKE_BIGRAM                logits mode (RKLLM_INFER_GET_LOGITS): a file of int32 rows R,
 *                              int32 vocab V, then R*V float32; the logits of input position t
 *                              are row (token[t] % R), so a test computes them independently
 *   FAKE_NO_LOGITS             refuse logits mode (-1), as a runtime without it would
 *   FAKE_LOGITS_NAN            put a NaN in the first row of logits
 * LoRA: rkllm_load_lora fails (-1) when the adapter file cannot be opened and otherwise prints
 * "fake lora loaded: name=N path=P scale=S"; a run whose RKLLMInferParam.lora_params names an
 * adapter that was not loaded fails, one that names a loaded one prints "fake lora used: N" and,
 * in logits mode, reads bigram row (token[t] + 1) % R, so an adapter visibly changes the figures.
 * Like the real runtime it prints "rkllm-runtime version: ..." at the start of rkllm_init,
 * fails (-1) when the model file cannot be opened, emits exactly max_new_tokens tokens (the
 * first at the end of prefill), reports RKLLMPerfStat in the FINISH callback (ABI >= 1.2.1) and
 * echoes the parameters it received so tests can check the struct layouts.
 */
#define _GNU_SOURCE
#include "rkllm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef FAKE_VERSION
#if defined(RKLLM_ABI_1_3)
#define FAKE_VERSION "1.3.0"
#elif defined(RKLLM_ABI_1_2_0)
#define FAKE_VERSION "1.2.0"
#else
#define FAKE_VERSION "1.2.3"
#endif
#endif

#define LINE "I rkllm: --------------------------------------------------------------------------------------\n"

typedef struct {
    RKLLMParam param;
    char model_path[4096];
    LLMResultCallback callback;
    void *userdata;
    double init_ms;
    int runs;
    volatile int running;
    char lora_name[256]; /* the adapter rkllm_load_lora loaded, "" if none */
} FakeLLM;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_until_ms(double deadline) {
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline / 1e3);
    ts.tv_nsec = (long)((deadline - ts.tv_sec * 1e3) * 1e6);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static double env_double(const char *name, double fallback) {
    const char *value = getenv(name);
    return value && *value ? atof(value) : fallback;
}

static const char *env_string(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value && *value ? value : fallback;
}

static int log_level(void) { return (int)env_double("RKLLM_LOG_LEVEL", 0); }

static double vm_hwm_mb(void) {
    char line[256];
    double kb = 0;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
    fclose(f);
    return kb / 1024.0;
}

RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.max_context_len = 512;
    p.max_new_tokens = 512;
    p.top_k = 40;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = true;
    p.extend_param.n_batch = 1;
    return p;
}

static int params_valid(const RKLLMParam *p) {
    return p->max_context_len > 0 && p->max_context_len <= 16384 && p->max_new_tokens > 0 &&
           p->top_p >= 0 && p->top_p <= 1 && p->temperature >= 0 && p->temperature <= 10 &&
           p->extend_param.enabled_cpus_num >= 0 && p->extend_param.enabled_cpus_num <= 8 &&
           p->extend_param.n_batch <= 1;
}

static void print_params(const RKLLMParam *p) {
    printf("I rkllm: fake params: max_context_len=%d max_new_tokens=%d top_k=%d top_p=%.3f "
           "temperature=%.3f repeat_penalty=%.3f frequency_penalty=%.3f presence_penalty=%.3f "
           "enabled_cpus_num=%d enabled_cpus_mask=0x%x skip_special_token=%d",
           p->max_context_len, p->max_new_tokens, p->top_k, p->top_p, p->temperature,
           p->repeat_penalty, p->frequency_penalty, p->presence_penalty,
           p->extend_param.enabled_cpus_num, p->extend_param.enabled_cpus_mask,
           p->skip_special_token);
#ifdef RKLLM_ABI_1_3
    printf(" ignore_eos_token=%d", p->ignore_eos_token);
#endif
    printf("\n");
}

static LLMResultCallback callback_of(RKLLMInitCallback callback, void **userdata) {
#ifdef RKLLM_ABI_1_3
    if (!callback) return NULL;
    *userdata = callback->result_userdata;
    return callback->result_callback;
#else
    *userdata = NULL;
    return callback;
#endif
}

int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLMInitCallback callback) {
    double start = now_ms();
    printf("I rkllm: rkllm-runtime version: %s, rknpu driver version: %s, platform: %s\n",
           FAKE_VERSION, env_string("FAKE_DRIVER_VERSION", "0.9.8"),
           env_string("FAKE_PLATFORM", "RK3588"));
    if (getenv("FAKE_INIT_CRASH")) _exit(3); /* before any flush: only an unbuffered stdout keeps the line */
    fflush(stdout);
    if (!handle || !param || !param->model_path || access(param->model_path, R_OK) != 0) {
        printf("E rkllm: failed to open model file %s\n", param && param->model_path ? param->model_path : "(null)");
        fflush(stdout);
        return -1;
    }
    printf("I rkllm: loading rkllm model from %s\n", param->model_path);
    printf("I rkllm: rkllm-toolkit version: %s, max_context_limit: 4096, npu_core_num: 3, "
           "target_platform: %s, model_dtype: W8A8\n",
           env_string("FAKE_TOOLKIT_VERSION", FAKE_VERSION), env_string("FAKE_PLATFORM", "RK3588"));
    print_params(param);
    FakeLLM *llm = calloc(1, sizeof *llm);
    llm->callback = callback_of(callback, &llm->userdata);
    if (!params_valid(param) || !llm->callback) {
        printf("E rkllm: invalid parameters or no result callback\n");
        fflush(stdout);
        free(llm);
        return -1;
    }
    llm->param = *param;
    snprintf(llm->model_path, sizeof llm->model_path, "%s", param->model_path);
    llm->param.model_path = llm->model_path;
    llm->init_ms = now_ms() - start;
    *handle = llm;
    fflush(stdout);
    return 0;
}

static int count_prompt_tokens(const RKLLMInput *input) {
    if (input->input_type == RKLLM_INPUT_TOKEN) return (int)input->token_input.n_tokens;
    if (input->input_type != RKLLM_INPUT_PROMPT || !input->prompt_input) return -1;
    int words = 0, in_word = 0;
    for (const char *c = input->prompt_input; *c; ++c) {
        int space = *c == ' ' || *c == '\n' || *c == '\t';
        words += !space && !in_word;
        in_word = !space;
    }
    return words;
}

static void emit(FakeLLM *llm, RKLLMResult *result, void *userdata, LLMCallState state) {
    llm->callback(result, userdata ? userdata : llm->userdata, state);
}

static void print_table(FakeLLM *llm, double prefill, int n_prefill, double gen, int n_gen,
                        double memory_mb) {
    if (log_level() < 1) return;
    if (llm->runs == 1) {
        printf(LINE "I rkllm:  Model init time (ms)  %.2f\n", llm->init_ms);
    }
    printf(LINE "I rkllm:  Stage         Total Time (ms)  Tokens    Time per Token (ms)      "
                "Tokens per Second      \n" LINE);
    printf("I rkllm:  Prefill       %-16.2f %-9d %-24.2f %-23.2f\n", prefill, n_prefill,
           n_prefill ? prefill / n_prefill : 0.0, prefill > 0 ? n_prefill * 1e3 / prefill : 0.0);
    printf("I rkllm:  Generate      %-16.2f %-9d %-24.2f %-23.2f\n", gen, n_gen,
           n_gen ? gen / n_gen : 0.0, gen > 0 ? n_gen * 1e3 / gen : 0.0);
    printf(LINE "I rkllm:  Peak Memory Usage (GB)\nI rkllm:  %-10.2f\n" LINE, memory_mb / 1024.0);
}

static int max_new_tokens(const FakeLLM *llm, const RKLLMInferParam *infer) {
#ifdef RKLLM_ABI_1_3
    if (infer->max_new_tokens > 0) return infer->max_new_tokens;
#else
    (void)infer;
#endif
    return llm->param.max_new_tokens;
}

/* RKLLM_INFER_GET_LOGITS over token input: one RUN_NORMAL callback carrying
 * RKLLMResultLogits {logits, vocab_size, num_tokens = every input token}, then RUN_FINISH. */
int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *adapter) {
    FakeLLM *llm = handle;
    if (!llm || !adapter || !adapter->lora_adapter_path || !adapter->lora_adapter_name ||
        access(adapter->lora_adapter_path, R_OK) != 0) {
        printf("E rkllm: failed to load lora %s\n",
               adapter && adapter->lora_adapter_path ? adapter->lora_adapter_path : "(null)");
        fflush(stdout);
        return -1;
    }
    snprintf(llm->lora_name, sizeof llm->lora_name, "%s", adapter->lora_adapter_name);
    printf("I rkllm: fake lora loaded: name=%s path=%s scale=%.3f\n", adapter->lora_adapter_name,
           adapter->lora_adapter_path, adapter->scale);
    fflush(stdout);
    return 0;
}

/* 0: no adapter; 1: the loaded one; -1: an adapter name that was never loaded. */
static int lora_in_use(const FakeLLM *llm, const RKLLMInferParam *infer) {
    if (!infer->lora_params) return 0;
    const char *name = infer->lora_params->lora_adapter_name;
    if (!name || !llm->lora_name[0] || strcmp(name, llm->lora_name) != 0) return -1;
    printf("I rkllm: fake lora used: %s\n", name);
    return 1;
}

static int run_logits(FakeLLM *llm, RKLLMInput *input, void *userdata, int lora) {
    const char *path = getenv("FAKE_BIGRAM");
    int32_t head[2] = {0, 0};
    FILE *f = path && !getenv("FAKE_NO_LOGITS") ? fopen(path, "rb") : NULL;
    if (!f || input->input_type != RKLLM_INPUT_TOKEN || fread(head, sizeof head, 1, f) != 1 ||
        head[0] <= 0 || head[1] <= 0) {
        if (f) fclose(f);
        printf("E rkllm: logits mode is not supported\n");
        fflush(stdout);
        return -1;
    }
    size_t rows = (size_t)head[0], vocab = (size_t)head[1], n = input->token_input.n_tokens;
    float *table = malloc(rows * vocab * sizeof(float)), *logits = malloc(n * vocab * sizeof(float));
    int ok = fread(table, sizeof(float), rows * vocab, f) == rows * vocab;
    fclose(f);
    for (size_t t = 0; ok && t < n; ++t) {
        size_t row = ((size_t)input->token_input.input_ids[t] + (size_t)lora) % rows;
        memcpy(logits + t * vocab, table + row * vocab, vocab * sizeof(float));
    }
    if (ok && getenv("FAKE_LOGITS_NAN")) logits[0] = 0.0f / 0.0f;
    RKLLMResult result;
    memset(&result, 0, sizeof result);
    result.logits.logits = logits;
    result.logits.vocab_size = (int)vocab;
    result.logits.num_tokens = (int)n;
    if (ok) emit(llm, &result, userdata, RKLLM_RUN_NORMAL);
    memset(&result, 0, sizeof result);
    emit(llm, &result, userdata, ok ? RKLLM_RUN_FINISH : RKLLM_RUN_ERROR);
    free(table);
    free(logits);
    return ok ? 0 : -1;
}

int rkllm_run(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    FakeLLM *llm = handle;
    int n_prompt = llm && input && infer ? count_prompt_tokens(input) : -1;
    int lora = n_prompt > 0 ? lora_in_use(llm, infer) : 0;
    if (lora < 0) {
        printf("E rkllm: lora adapter %s was not loaded\n", infer->lora_params->lora_adapter_name);
        fflush(stdout);
        return -1;
    }
    if (n_prompt > 0 && infer->mode == RKLLM_INFER_GET_LOGITS) return run_logits(llm, input, userdata, lora);
    if (n_prompt <= 0 || infer->mode != RKLLM_INFER_GENERATE) {
        printf("E rkllm: invalid input\n");
        fflush(stdout);
        return -1;
    }
    int n_new = max_new_tokens(llm, infer);
    double prefill = env_double("FAKE_PREFILL_MS", 200), step = env_double("FAKE_DECODE_MS_PER_TOKEN", 20);
    RKLLMResult result;
    memset(&result, 0, sizeof result);
    llm->running = 1;
    double start = now_ms(), first = 0, last = 0;
    for (int k = 0; k < n_new; ++k) {
        sleep_until_ms(start + prefill + k * step);
        last = now_ms();
        if (k == 0) first = last;
        result.text = "hi";
        result.token_id = 1000 + k;
        emit(llm, &result, userdata, RKLLM_RUN_NORMAL);
    }
    llm->runs += 1;
    double memory = env_double("FAKE_MEMORY_MB", vm_hwm_mb());
    memset(&result, 0, sizeof result);
#ifndef RKLLM_ABI_1_2_0
    result.perf.prefill_time_ms = (float)(first - start);
    result.perf.prefill_tokens = n_prompt;
    result.perf.generate_time_ms = (float)(last - first);
    result.perf.generate_tokens = n_new - 1;
    result.perf.memory_usage_mb = (float)memory;
#endif
    print_table(llm, first - start, n_prompt, last - first, n_new - 1, memory);
    fflush(stdout);
    emit(llm, &result, userdata, RKLLM_RUN_FINISH);
    llm->running = 0;
    return 0;
}

int rkllm_destroy(LLMHandle handle) {
    free(handle);
    return 0;
}

int rkllm_abort(LLMHandle handle) {
    (void)handle;
    return 0;
}

int rkllm_is_running(LLMHandle handle) { return handle ? ((FakeLLM *)handle)->running : 0; }
