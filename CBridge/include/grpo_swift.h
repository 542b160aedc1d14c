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

#ifdef __cplusplus
}
#endif

#endif /* GRPO_SWIFT_H */
