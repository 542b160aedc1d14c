/*
 * grpo_swift from C: one GRPO step's numbers through the C ABI (CBridge/include/grpo_swift.h).
 *
 * 2 prompts x G=4 completions of length <= 3, two reward functions (correctness, format):
 *   1. grpo_group_advantages_f64   advantages from the (8, 2) rewards
 *   2. grpo_selective_log_softmax  per-token log-probs of the sampled tokens from (8*3, V) logits
 *   3. grpo_policy_loss            the 'grpo' loss at ratio 1 (old_logps = NULL) with beta = 0,
 *                                  its gradient d loss / d logps and TRL's metrics
 * It checks that the loss is 0 while the gradient is -A_i / (L_i B), the REINFORCE gradient,
 * and prints both. Build and run: examples/c/build_and_run.sh (see that script).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "grpo_swift.h"

#define B 8
#define T 3
#define V 5
#define G 4

static int check(grpo_status s, const char *what, const char *err) {
    if (s != GRPO_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, grpo_status_name(s), err);
        return 1;
    }
    return 0;
}

int main(void) {
    char err[256] = {0};
    printf("grpo_swift C ABI version %d, %d worker threads\n", grpo_abi_version(), grpo_get_num_threads());

    /* 1. advantages: rewards (B, 2) row-major, weights 1.0 and 0.5 */
    const double rewards[B * 2] = {1, 1, 0, 1, 0, 0.5, 1, 0,   /* prompt 0 */
                                   0, 1, 0, 1, 1, 1, 0, 0};    /* prompt 1 */
    const double weights[2] = {1.0, 0.5};
    grpo_advantages_config acfg = {.num_generations = G, .scale_rewards = GRPO_SCALE_GROUP,
                                   .aggregation = GRPO_SUM_THEN_NORMALIZE};
    double adv[B], mean[B], std[B];
    uint8_t zero_std[B];
    if (check(grpo_group_advantages_f64(rewards, B, 2, weights, &acfg, adv, mean, std, zero_std, err,
                                        sizeof err), "grpo_group_advantages_f64", err))
        return 1;

    /* 2. log-probs of the sampled tokens from logits (B*T, V) */
    float logits[B * T * V];
    int64_t tokens[B * T];
    uint8_t mask[B * T];
    const int lengths[B] = {3, 1, 2, 3, 2, 3, 1, 2};
    for (int i = 0; i < B * T * V; i++) logits[i] = (float)sin(0.37 * i);
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (i * 7) % V;
        mask[i] = (uint8_t)((i % T) < lengths[i / T]);
    }
    float logps[B * T];
    if (check(grpo_selective_log_softmax(logits, GRPO_F32, B * T, V, tokens, mask, 1.0, logps, NULL, NULL,
                                         err, sizeof err), "grpo_selective_log_softmax", err))
        return 1;

    /* 3. the loss at ratio 1, beta = 0 */
    float adv32[B];
    for (int i = 0; i < B; i++) adv32[i] = (float)adv[i];
    grpo_loss_inputs in;
    memset(&in, 0, sizeof in);
    in.batch = B;
    in.length = T;
    in.dtype = GRPO_F32;
    in.aux_dtype = GRPO_F32;
    in.logps = logps;
    in.advantages = adv32;
    in.advantages_cols = 1;
    in.mask = mask;
    grpo_loss_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.loss_type = GRPO_LOSS_GRPO;
    cfg.importance_sampling_level = GRPO_IS_TOKEN;
    cfg.epsilon = 0.2;
    cfg.epsilon_high = 0.2;
    cfg.top_entropy_quantile = 1.0;
    cfg.sapo_temperature_pos = 1.0;
    cfg.sapo_temperature_neg = 1.05;
    cfg.vespo_k_pos = 2.0;
    cfg.vespo_lambda_pos = 3.0;
    cfg.vespo_k_neg = 3.0;
    cfg.vespo_lambda_neg = 2.0;
    cfg.num_items_in_batch = -1.0;
    cfg.num_processes = 1;
    cfg.gradient_accumulation_steps = 1;
    float grad[B * T];
    grpo_loss_metrics met;
    if (check(grpo_policy_loss(&in, &cfg, grad, NULL, &met, err, sizeof err), "grpo_policy_loss", err))
        return 1;

    printf("%4s %9s %9s %3s %10s %12s\n", "row", "correct", "format", "L", "advantage", "grad/token");
    double max_dev = 0.0, norm = 0.0;
    for (int i = 0; i < B; i++) {
        double expect = -adv[i] / (lengths[i] * (double)B);
        printf("%4d %9.1f %9.1f %3d %10.4f %12.6f\n", i, rewards[2 * i], rewards[2 * i + 1], lengths[i], adv[i],
               grad[i * T]);
        for (int t = 0; t < T; t++) {
            double want = mask[i * T + t] ? expect : 0.0;
            max_dev = fmax(max_dev, fabs(grad[i * T + t] - want));
            norm += (double)grad[i * T + t] * grad[i * T + t];
        }
    }
    printf("loss %.3g (policy term %.3g, kl term %.3g), gradient norm %.4f\n", met.loss, met.policy_term,
           met.kl_term, sqrt(norm));
    printf("max |grad - (-A_i / (L_i B))| = %.2g\n", max_dev);
    if (!(fabs(met.loss) < 1e-6 && sqrt(norm) > 1e-3 && max_dev < 1e-6)) {
        fprintf(stderr, "unexpected: the loss should be ~0 and the gradient the REINFORCE gradient\n");
        return 1;
    }

    /* errors come back as a status and a message, never a crash */
    grpo_status s = grpo_policy_loss(&in, &cfg, grad, NULL, NULL, err, sizeof err);
    printf("metrics = NULL -> %s: %s\n", grpo_status_name(s), err);
    return s == GRPO_OK;
}
