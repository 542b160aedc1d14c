/*
 * grpo_swift.h — the C ABI of grpo_swift. This header is the single source of truth:
 * the Swift core implements every function below with `@c @implementation`, so any
 * drift between this file and the Swift code fails the build.
 *
 * Conventions (every function):
 *   - Returns a grpo_status. GRPO_OK (0) means every output was written.
 *   - On failure, a NUL-terminated message is written into `err` (at most `errlen`
 *     bytes, truncated if longer; `err` may be NULL when errlen is 0). Outputs may
 *     have been partially written. No global error state: safe from many threads.
 *   - Sizes are ptrdiff_t element counts. Arrays are dense and row-major (C order).
 *   - Inputs are never written (except where a function documents an in-place option).
 *   - Outputs are caller-allocated; the library allocates only its own scratch.
 *   - Nothing traps: bad sizes, NULL pointers and size overflow return a status.
 *   - Reductions run in a fixed order: results are bitwise identical for any thread
 *     count (see grpo_set_num_threads).
 */
#ifndef GRPO_SWIFT_H
#define GRPO_SWIFT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------ */
/* Status codes and library-wide settings                                          */
/* ------------------------------------------------------------------------------ */

typedef enum grpo_status {
    GRPO_OK = 0,
    /** A required pointer was NULL. */
    GRPO_ERR_NULL = 1,
    /** A size or shape is invalid or inconsistent (negative, zero where not allowed, mismatch). */
    GRPO_ERR_SHAPE = 2,
    /** A value or option is invalid (unknown enum, non-positive normaliser, ...). */
    GRPO_ERR_VALUE = 3,
    /** An unsupported element type. */
    GRPO_ERR_DTYPE = 4,
    /** A size product overflows ptrdiff_t (checked before any allocation). */
    GRPO_ERR_OVERFLOW = 5,
    /** Scratch memory could not be allocated. */
    GRPO_ERR_NOMEM = 6,
    /** The call was interrupted by a signal check (see grpo_set_interrupt_flag). */
    GRPO_ERR_INTERRUPTED = 7,
    /** A bug in grpo_swift: please report it with the message. */
    GRPO_ERR_INTERNAL = 8
} grpo_status;

/** Element types for functions that take a dtype argument. */
typedef enum grpo_dtype {
    GRPO_F32 = 0,
    GRPO_F64 = 1,
    GRPO_BF16 = 2,
    GRPO_F16 = 3
} grpo_dtype;

/** ABI version: bumped on any incompatible change of this header. */
#define GRPO_SWIFT_ABI_VERSION 1

/** The ABI version the library was built with (compare with GRPO_SWIFT_ABI_VERSION). */
int32_t grpo_abi_version(void);

/** Short human-readable name of a status ("ok", "shape", ...). Never NULL. */
const char *grpo_status_name(grpo_status status);

/**
 * Number of worker threads the kernels may use (>= 1). Initialised from the
 * environment variable GRPO_SWIFT_NUM_THREADS when set, else the number of online CPUs.
 * Results do not depend on it (fixed-order reductions).
 */
int32_t grpo_get_num_threads(void);

/** Sets the worker-thread count; n < 1 is an error (GRPO_ERR_VALUE). */
grpo_status grpo_set_num_threads(int32_t n);

/**
 * Whether the library was compiled with AVX2/FMA target features (1) or as a portable
 * build (0). A caller must not run an AVX2 build on a CPU without AVX2 and FMA.
 */
int32_t grpo_built_with_avx2(void);

/* ------------------------------------------------------------------------------ */
/* Group advantages (TRL 1.16 GRPOTrainer semantics)                               */
/* ------------------------------------------------------------------------------ */

/** How the centred reward is scaled (TRL's `scale_rewards`). */
typedef enum grpo_scale_rewards {
    /** Divide by the per-group std + 1e-4. */
    GRPO_SCALE_GROUP = 0,
    /** Divide by the whole-batch std + 1e-4 (the mean stays per group). */
    GRPO_SCALE_BATCH = 1,
    /** No division. */
    GRPO_SCALE_NONE = 2
} grpo_scale_rewards;

/** How several reward functions are combined (TRL's `multi_objective_aggregation`). */
typedef enum grpo_reward_aggregation {
    /** Weighted nansum of rewards, then the group normalisation. */
    GRPO_SUM_THEN_NORMALIZE = 0,
    /** GDPO: group z-score of each reward, weighted nansum, then a batch z-score. */
    GRPO_NORMALIZE_THEN_SUM = 1
} grpo_reward_aggregation;

typedef struct grpo_advantages_config {
    /** G: rows per group; groups are G consecutive rows. >= 2. */
    ptrdiff_t num_generations;
    /** A grpo_scale_rewards value. */
    int32_t scale_rewards;
    /** A grpo_reward_aggregation value. */
    int32_t aggregation;
} grpo_advantages_config;

/**
 * Group-relative advantages from per-function rewards.
 *
 * rewards:        (n, num_funcs) row-major; NaN marks a missing reward. A row whose rewards
 *                 are all NaN is unscorable: its advantage is 0.
 * reward_weights: (num_funcs) or NULL for all ones.
 * n:              rows, a positive multiple of cfg->num_generations.
 * Outputs (each (n)): advantages; mean and std, the group statistics each row was
 *   normalised with (for normalize_then_sum: the final batch z-score's mean and std);
 *   is_std_zero (0/1): isclose(std, 0) of the group std of the summed reward, as TRL
 *   logs frac_reward_zero_std.
 * Accumulation is in double for both entry points; the std is two-pass and
 * Bessel-corrected over valid (non-NaN) entries (NaN when fewer than 2).
 */
grpo_status grpo_group_advantages_f64(const double *rewards, ptrdiff_t n, ptrdiff_t num_funcs,
                                      const double *reward_weights,
                                      const grpo_advantages_config *cfg,
                                      double *advantages, double *mean, double *std,
                                      uint8_t *is_std_zero, char *err, size_t errlen);

/** As grpo_group_advantages_f64 for float32 rewards/weights/outputs (double accumulation). */
grpo_status grpo_group_advantages_f32(const float *rewards, ptrdiff_t n, ptrdiff_t num_funcs,
                                      const float *reward_weights,
                                      const grpo_advantages_config *cfg,
                                      float *advantages, float *mean, float *std,
                                      uint8_t *is_std_zero, char *err, size_t errlen);

/* ==== policy loss: section owned by the loss kernel (issue 3) ==== */

/* ==== log-probs: section owned by the log-prob kernels (issue 5) ==== */

/*
 * Per-token log-probabilities and entropy (TRL 1.16 `selective_log_softmax`,
 * `entropy_from_logits`, `ChunkedLogProbFunction`).
 *
 * Maths, per row i (V = vocabulary, tau = temperature, y = target):
 *   z = logits / tau,  lse = logsumexp(z),  lp = z[y] - lse  (always <= 0),
 *   H = lse - sum_v p_v z_v  (p = softmax(z); shift-invariant),
 *   d lp / d logits_v = (1[v = y] - p_v) / tau,  d H / d logits_v = -p_v (log p_v + H) / tau.
 * Unscored rows: a target < 0 (TRL's label -100) or row_mask[i] == 0 gives lp = 0, H = 0,
 * logsumexp = 0 and a zero gradient row (TRL masks both outputs with masked_fill, so no
 * gradient flows through them). A target >= V is GRPO_ERR_VALUE. Non-finite logits give
 * non-finite outputs (as torch does), never a trap.
 * Arithmetic is float32 (float64 for F64 logits); exp is a vectorised polynomial accurate to
 * 2 ulp. `logsumexp` is ALWAYS float64: it carries the float32 max and log-sum-exp without
 * rounding, so a backward from it is as accurate as one that recomputes them.
 * Results are bitwise identical for any thread count.
 */

/**
 * Forward from logits. No-grad inference (old/ref policies): pass logsumexp = NULL; nothing
 * needs to be kept.
 *
 * logits:      (n, vocab) row-major, element type `dtype` (a grpo_dtype: F32, F64, BF16 as
 *              uint16 bits, F16).
 * targets:     (n) int64.
 * row_mask:    (n) uint8 or NULL (all rows scored).
 * temperature: > 0 and finite.
 * Outputs, each (n): log_probs (required) and entropy (NULL to skip) as float32, or float64
 * when dtype is GRPO_F64; logsumexp (float64, NULL to skip): save it for the backward.
 */
grpo_status grpo_selective_log_softmax(const void *logits, int32_t dtype, ptrdiff_t n,
                                       ptrdiff_t vocab, const int64_t *targets,
                                       const uint8_t *row_mask, double temperature,
                                       void *log_probs, void *entropy, double *logsumexp,
                                       char *err, size_t errlen);

/**
 * Backward from logits: writes grad_logits = d(sum_i gl_i lp_i + gh_i H_i) / d logits.
 *
 * logits, dtype, n, vocab, targets, row_mask, temperature: as in the forward.
 * logsumexp:       (n) float64 from the forward, or NULL to recompute it (one more pass).
 * entropy:         (n) from the forward (float32; float64 for F64); required when
 *                  grad_entropy is given and logsumexp is not NULL (else recomputed).
 * grad_log_probs:  (n) or NULL (= zeros); float32, or float64 for F64.
 * grad_entropy:    (n) or NULL (= zeros); same type.
 * grad_logits:     (n, vocab) of element type grad_dtype, which must be GRPO_F32 or equal to
 *                  dtype (GRPO_F64 logits: GRPO_F64 only). In-place option: grad_logits may be
 *                  EXACTLY the logits pointer (same dtype): the logits are then overwritten with
 *                  their gradient, saving an n x vocab buffer. Any other overlap is
 *                  GRPO_ERR_VALUE.
 */
grpo_status grpo_selective_log_softmax_backward(
    const void *logits, int32_t dtype, ptrdiff_t n, ptrdiff_t vocab, const int64_t *targets,
    const uint8_t *row_mask, double temperature, const double *logsumexp, const void *entropy,
    const void *grad_log_probs, const void *grad_entropy, void *grad_logits, int32_t grad_dtype,
    char *err, size_t errlen);

/** Options of the fused LM head (names as in TRL). */
typedef struct grpo_lm_head_config {
    /** > 0 and finite. */
    double temperature;
    /** Multiplies hidden W^T + bias before the softcap; finite (1.0 = none). */
    double logit_scale;
    /** c > 0: logits -> c tanh(logits / c); 0 = no softcapping. */
    double final_logit_softcapping;
    /** Rows / vocabulary columns per tile, 0 = the measured defaults, at most 65536. */
    ptrdiff_t tile_rows;
    ptrdiff_t tile_cols;
} grpo_lm_head_config;

/**
 * Fused LM head forward: lp and H of logits = (hidden weight^T + bias) * logit_scale
 * (softcapped) / temperature, WITHOUT materialising the n x vocab logits (tiles of
 * tile_rows x tile_cols through cblas_sgemm; see grpo_fused_log_probs_scratch_bytes).
 *
 * hidden: (n, hidden_size) float32.  weight: (vocab, hidden_size) float32.
 * bias:   (vocab) float32 or NULL.   targets: (n) int64, < 0 = not scored.
 * Outputs, each (n): log_probs (float32, required), entropy (float32, NULL to skip),
 * logsumexp (float64, NULL to skip: the no-grad inference entry point for old/ref
 * log-probs, nothing is kept for a backward).
 */
grpo_status grpo_fused_log_probs_f32(const float *hidden, const float *weight, const float *bias,
                                     ptrdiff_t n, ptrdiff_t hidden_size, ptrdiff_t vocab,
                                     const int64_t *targets, const grpo_lm_head_config *cfg,
                                     float *log_probs, float *entropy, double *logsumexp,
                                     char *err, size_t errlen);

/**
 * Fused LM head backward: gradients of sum_i (gl_i lp_i + gh_i H_i). Each tile is recomputed,
 * turned into d loss / d logits in place, and accumulated in float32 into
 *   grad_hidden (n, hidden_size), grad_weight (vocab, hidden_size) (ONE buffer), grad_bias
 *   (vocab); each may be NULL (not computed) and is OVERWRITTEN (not accumulated into).
 * grad_bias requires bias. logsumexp (n, float64, required) and entropy (n, float32; required
 * when grad_entropy is given) come from the forward. grad_log_probs / grad_entropy: (n)
 * float32 or NULL (= zeros). Other arguments as in the forward (same values).
 */
grpo_status grpo_fused_log_probs_backward_f32(
    const float *hidden, const float *weight, const float *bias, ptrdiff_t n,
    ptrdiff_t hidden_size, ptrdiff_t vocab, const int64_t *targets,
    const grpo_lm_head_config *cfg, const double *logsumexp, const float *entropy,
    const float *grad_log_probs, const float *grad_entropy, float *grad_hidden,
    float *grad_weight, float *grad_bias, char *err, size_t errlen);

/**
 * Bytes of scratch one fused forward or backward call allocates for these sizes:
 * min(n, tile_rows) x min(vocab, tile_cols) floats plus 4 floats per tile row, bounded
 * independently of n and vocab (16 MiB + 16 KiB with the default tiles). Written to *bytes.
 */
grpo_status grpo_fused_log_probs_scratch_bytes(ptrdiff_t n, ptrdiff_t hidden_size,
                                               ptrdiff_t vocab, const grpo_lm_head_config *cfg,
                                               ptrdiff_t *bytes, char *err, size_t errlen);

/**
 * Benchmark anchor: one plain row-major cblas_sgemm c (m x n) = a (m x k) b^T (b is n x k)
 * with OpenBLAS's own threading set to grpo_get_num_threads(). Not a kernel of the library.
 */
grpo_status grpo_benchmark_sgemm_nt_f32(const float *a, const float *b, ptrdiff_t m,
                                        ptrdiff_t n, ptrdiff_t k, float *c,
                                        char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* GRPO_SWIFT_H */
