/* The rkllm.h declarations the fake runtime and the fake llm_demo need, for three ABIs.
 *
 * Layouts follow airockchip/rknn-llm's rkllm-runtime/Linux/librkllm_api/include/rkllm.h:
 *   -DRKLLM_ABI_1_2_0  release 1.2.0 / 1.2.1b1: void callback, no RKLLMPerfStat, no role
 *   (default)          release 1.2.1 .. 1.2.3: int callback, RKLLMPerfStat, role + enable_thinking
 *   -DRKLLM_ABI_1_3    release 1.3.0: RKLLMCallback struct, ignore_eos_token, no img_* fields,
 *                      RKLLMInferParam.sampling_params and .max_new_tokens
 * Only the members the fake reads are spelled out; multimodal inputs are left out of the union
 * (the fake only reads, so a smaller union is harmless).
 */
#ifndef FAKE_RKLLM_H
#define FAKE_RKLLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(RKLLM_ABI_1_3) && defined(RKLLM_ABI_1_2_0)
#error "choose one ABI"
#endif

typedef void *LLMHandle;

typedef enum {
    RKLLM_RUN_NORMAL = 0,
    RKLLM_RUN_WAITING = 1,
    RKLLM_RUN_FINISH = 2,
    RKLLM_RUN_ERROR = 3,
} LLMCallState;

typedef enum {
    RKLLM_INPUT_PROMPT = 0,
    RKLLM_INPUT_TOKEN = 1,
    RKLLM_INPUT_EMBED = 2,
    RKLLM_INPUT_MULTIMODAL = 3,
} RKLLMInputType;

typedef enum {
    RKLLM_INFER_GENERATE = 0,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
    RKLLM_INFER_GET_LOGITS = 2,
} RKLLMInferMode;

typedef struct {
    int32_t base_domain_id;
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
    uint8_t n_batch;
    int8_t use_cross_attn;
    uint8_t reserved[104];
} RKLLMExtendParam;

typedef struct {
    const char *model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
    int32_t n_keep;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
#ifdef RKLLM_ABI_1_3
    bool ignore_eos_token;
    bool is_async;
#else
    bool is_async;
    const char *img_start;
    const char *img_end;
    const char *img_content;
#endif
    RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct {
    const char *lora_adapter_path;
    const char *lora_adapter_name;
    float scale;
} RKLLMLoraAdapter;

typedef struct {
    const char *lora_adapter_name;
} RKLLMLoraParam;

typedef struct {
    float *embed;
    size_t n_tokens;
} RKLLMEmbedInput;

typedef struct {
    int32_t *input_ids;
    size_t n_tokens;
} RKLLMTokenInput;

typedef struct {
#ifndef RKLLM_ABI_1_2_0
    const char *role;
    bool enable_thinking;
#endif
    RKLLMInputType input_type;
    union {
        const char *prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
    };
} RKLLMInput;

typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam *lora_params;
    void *prompt_cache_params;
#ifdef RKLLM_ABI_1_3
    void *sampling_params;
#endif
    int keep_history;
#ifdef RKLLM_ABI_1_3
    int32_t max_new_tokens;
#endif
} RKLLMInferParam;

typedef struct {
    const float *hidden_states;
    int embd_size;
    int num_tokens;
} RKLLMResultLastHiddenLayer;

typedef struct {
    const float *logits;
    int vocab_size;
    int num_tokens;
} RKLLMResultLogits;

typedef struct {
    float prefill_time_ms;
    int prefill_tokens;
    float generate_time_ms;
    int generate_tokens;
    float memory_usage_mb;
} RKLLMPerfStat;

typedef struct {
    const char *text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
    RKLLMResultLogits logits;
#ifndef RKLLM_ABI_1_2_0
    RKLLMPerfStat perf;
#endif
} RKLLMResult;

#ifdef RKLLM_ABI_1_2_0
typedef void (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#else
typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#endif

#ifdef RKLLM_ABI_1_3
typedef struct {
    LLMResultCallback result_callback;
    void *result_userdata;
    void *tokenizer_callback;
    void *tokenizer_userdata;
    void *embed_callback;
    void *embed_userdata;
} RKLLMCallback;
typedef RKLLMCallback *RKLLMInitCallback;
#else
typedef LLMResultCallback RKLLMInitCallback;
#endif

RKLLMParam rkllm_createDefaultParam(void);
int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLMInitCallback callback);
int rkllm_run(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer_params, void *userdata);
int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora_adapter);
int rkllm_destroy(LLMHandle handle);
int rkllm_abort(LLMHandle handle);
int rkllm_is_running(LLMHandle handle);

#endif
