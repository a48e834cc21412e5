/* A stand-in for Rockchip's examples/rkllm_api_demo llm_demo, linked against the fake runtime.
 *
 * Same command line and stdin loop: `llm_demo <model> <max_new_tokens> <max_context_len>`, then
 * one prompt per line ("exit" ends, "clear" is ignored); each answer is printed after "robot: ".
 * Build: gcc -o llm_demo llm_demo.c -L<dir> -lrkllmrt -Wl,-rpath,<dir>
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rkllm.h"

#ifdef RKLLM_ABI_1_2_0
static void callback(RKLLMResult *result, void *userdata, LLMCallState state) {
#else
static int callback(RKLLMResult *result, void *userdata, LLMCallState state) {
#endif
    (void)userdata;
    if (state == RKLLM_RUN_FINISH) printf("\n");
    else if (state == RKLLM_RUN_ERROR) printf("\\run error\n");
    else if (state == RKLLM_RUN_NORMAL) printf("%s", result->text);
#ifndef RKLLM_ABI_1_2_0
    return 0;
#endif
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "Usage: %s model_path max_new_tokens max_context_len\n", argv[0]);
        return 1;
    }
    printf("rkllm init start\n");
    RKLLMParam param = rkllm_createDefaultParam();
    param.model_path = argv[1];
    param.top_k = 1;
    param.max_new_tokens = atoi(argv[2]);
    param.max_context_len = atoi(argv[3]);
    LLMHandle handle = NULL;
#ifdef RKLLM_ABI_1_3
    RKLLMCallback callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.result_callback = callback;
    int ret = rkllm_init(&handle, &param, &callbacks);
#else
    int ret = rkllm_init(&handle, &param, callback);
#endif
    if (ret != 0) {
        printf("rkllm init failed\n");
        return 1;
    }
    printf("rkllm init success\n");
    RKLLMInput input;
    RKLLMInferParam infer;
    memset(&input, 0, sizeof input);
    memset(&infer, 0, sizeof infer);
    char line[1 << 16];
    while (printf("\nuser: "), fflush(stdout), fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "exit") == 0) break;
        if (strcmp(line, "clear") == 0) continue;
        input.input_type = RKLLM_INPUT_PROMPT;
#ifndef RKLLM_ABI_1_2_0
        input.role = "user";
#endif
        input.prompt_input = line;
        printf("robot: ");
        rkllm_run(handle, &input, &infer, NULL);
    }
    rkllm_destroy(handle);
    return 0;
}
