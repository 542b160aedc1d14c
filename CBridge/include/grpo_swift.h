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
    /** The call was interrupted: the calling thread's interrupt flag was raised (see
     *  grpo_set_interrupt_flag). Outputs are partially written. */
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

/*
 * Interruption (Ctrl-C during a long call).
 *
 * Every kernel polls an interrupt flag: at the start of each parallel loop, before each
 * chunk of work on every worker thread, and in its long serial loops. Once the flag is
 * nonzero, no new chunk starts; the running chunks finish and the function returns
 * GRPO_ERR_INTERRUPTED (outputs partially written, scratch released). The bound on the
 * delay is one chunk of work plus the serial code between two checks: milliseconds for most
 * kernels; the largest chunk is one grad_hidden sub-GEMM of the fused linear loss's resident
 * schedule (block rows x 128 x vocab multiply-adds: ~0.35 s measured at N=2048, H=896,
 * V=32768 on 2 loaded cores). python/tests/test_interrupt.py measures the delay.
 *
 * The flag is per calling thread: grpo_set_interrupt_flag registers it for kernel calls
 * made FROM THE CALLING THREAD (thread-local; the worker threads of such a call read the
 * caller's flag). Calls from other threads never see it, so concurrent calls from many
 * threads are unaffected and stay bitwise identical. The library only reads *flag, with
 * relaxed atomic loads; its owner raises it with an atomic store of a nonzero value --
 * e.g. `__atomic_store_n(&flag, 1, __ATOMIC_RELAXED)` in a SIGINT handler (a lock-free
 * 32-bit atomic store is async-signal-safe) -- and resets it to 0 before the next call.
 * The flag must stay valid while it is registered. No flag registered (the default):
 * kernels never stop early.
 *
 * The Python extension does this around every large kernel call made from the main
 * thread while Python's SIGINT handler is the default one: it installs a SIGINT handler
 * that raises the flag and chains to Python's handler, restores Python's handler after
 * the call, and turns GRPO_ERR_INTERRUPTED into KeyboardInterrupt.
 */

/**
 * Registers `flag` as the interrupt flag of the calling thread (NULL: none; replaces any
 * previous registration -- read it first with grpo_get_interrupt_flag to nest scopes).
 * Returns GRPO_ERR_NOMEM if the thread-local slot cannot be set (interruption is then
 * unavailable on this thread; kernels still run to completion).
 */
grpo_status grpo_set_interrupt_flag(const int32_t *flag);

/** The interrupt flag registered for the calling thread, or NULL. */
const int32_t *grpo_get_interrupt_flag(void);

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

/*
 * The GRPO policy loss of every variant TRL 1.16 supports (GRPOTrainer._compute_loss), its
 * gradient with respect to the per-token log-probs in closed form, and the metrics TRL logs.
 *
 * Notation: B rows, T positions, m the 0/1 mask, L_i = sum_t m_it, A advantages, lp logps.
 *   log_ratio = lp - old (old = stop_grad(lp) when old_logps is NULL: ratio 1 with gradient)
 *   token level:    r_it = exp(log_ratio_it)
 *   sequence level: r_i  = exp(sum_t(log_ratio m)_i / max(L_i, 1))          (GSPO)
 *   sequence_token: r_it = sg(s_i) exp(lp_t - sg(lp_t)), s_i the sequence-level ratio (GSPO-token,
 *                   TRL's former trl.experimental.gspo_token): the value of s_i, the gradient of a
 *                   token-level ratio, d r_it / d lp_t = s_i (own token only). Metrics per token.
 *   grpo/bnpo/dr_grpo/dapo/luspo: c2 = clamp(r, 1-epsilon, 1+epsilon_high),
 *        c1 = r (min(r, delta) when use_delta), l = -min(c1 A, c2 A)
 *        (torch.min/clamp gradients: a tie sends half of the gradient to each branch;
 *        clamp passes the gradient only strictly inside its bounds, so a ratio exactly on
 *        a clip boundary gets half the unclipped gradient).
 *   cispo: l = -sg(min(r, epsilon_high)) A lp
 *   sapo:  tau = sapo_temperature_pos if A > 0 else _neg; l = -(4/tau) sigmoid(tau (r-1)) A
 *   vespo: s_i = sum_t clamp(log_ratio, -20, 20) m (+ sum_t clamp(log IS, log 1e-8, 20) m),
 *          logw = clamp(s_i, log 1e-8, 20), (k, lam) by A >= 0 (lam clamped to >= 1e-4),
 *          phi = exp(lam + k logw - lam exp(logw)) (non-finite -> 0), detached; l = -phi A lp
 *   Dual-clip PPO (use_clip_ratio_c, clipped family only; verl's clip_ratio_c, Ye et al. 2019): for
 *          A < 0, l = min(l, -A clip_ratio_c) (torch.min gradients: 0 when capped, half on a tie);
 *          metric pg_clipfrac_lower = token mean of [l > -A clip_ratio_c and A < 0] (l before the
 *          cap), verl's actor/pg_clipfrac_lower; NaN when dual clip is off.
 *   Then l *= off-policy keep (A >= 0 or mean_t((sampling - lp) m) <= threshold, NaN
 *   differences count as 0, sampling defaults to old, then to lp), l *= high-entropy mask,
 *   l *= importance_sampling_ratio (not for vespo), l += beta kl with kl the estimator
 *   kl_estimator (default k3 = expm1(ref - lp) - (ref - lp), TRL's), times r when
 *   use_bias_correction_kl. See grpo_kl_estimator for the estimators and their gradients.
 *   gmpo (TRL 1.16 trl.experimental.gmpo.GMPOTrainer; token level, one advantage per row, no
 *          delta / bias-corrected KL / off-policy mask / IS ratio, each refused):
 *          c_t = clamp(log_ratio_t, -epsilon, epsilon_high) (log space; TRL's GMPOConfig default
 *          epsilon is 0.4: pass it, this kernel has no per-loss default), z_t = min(log_ratio_t, c_t)
 *          if A > 0 else max(log_ratio_t, c_t), e = m times the high-entropy mask,
 *          coef_i = exp(sum_t(z e)_i / max(sum_t e_i, 1)), row loss -coef_i A_i + beta mean_t(kl m)_i,
 *          loss = mean over the B rows / GA (the entropy mask acts only inside the geometric mean;
 *          entropy_coef adds the entropy bonus below as for every loss type, TRL's GMPOTrainer has none).
 *          Gradient: d loss / d lp_t = (-coef_i A_i e_t dz_t / max(sum e_i, 1) + beta dkl_t / max(L_i,1)) / (B GA)
 *          with torch's clamp/min/max gradients (dz = 1 unclipped, 0 clipped, 1/2 on a bound).
 *          Metrics: clip_ratio/low_mean, high_mean, region_mean = token means of [log_ratio < -epsilon
 *          and A < 0], [log_ratio > epsilon_high and A > 0], either; low_min / high_max over the
 *          rows' means, as TRL. Deviation: a row without valid tokens contributes 0 (TRL adds the
 *          constant -A_i / (B GA) for it: coef = exp(0)); gradients are identical.
 *
 * Aggregation (GA = gradient_accumulation_steps, W = num_processes, S = steps_per_generation,
 * N = num_items_in_batch), exactly TRL 1.16 in training mode:
 *   grpo, sapo, gmpo:    loss = mean_i[ sum_t(l m)_i / max(L_i, 1) ] / GA
 *   bnpo:                loss = sum(l m) / max(sum m, 1) / GA
 *   dr_grpo:             loss = sum(l m) / (B * max_completion_length) / GA
 *   dapo, cispo, vespo:  loss = sum(l m) / (max(N, 1) / W * GA / S)
 *   luspo:               loss = mean_i[ sum_t(l m)_i ] / GA
 * The kernel takes these raw numbers (never guesses them). For TRL's eval mode pass GA = S = 1.
 * Entropy bonus (entropy_coef != 0): loss -= entropy_coef * sum(H e) / max(sum e, 1) / GA with
 * e = m (times the high-entropy mask when top_entropy_quantile < 1).
 * High-entropy mask (top_entropy_quantile < 1): keep valid tokens with H >= q, q the
 * torch.quantile (linear interpolation, float32) of the valid entropies at 1 - top_entropy_quantile,
 * or the caller's q (use_entropy_threshold: TRL takes the quantile over every process's entropies).
 *
 * Multi-process (W > 1, data-parallel): each process calls the kernel on its own rows with W and
 * the global N; the gradients are then averaged by the data-parallel all-reduce. For dapo, cispo
 * and vespo that average is the single-process gradient of the union of the rows; for grpo, sapo,
 * dr_grpo and luspo too when every process holds the same number of rows; bnpo and the entropy
 * bonus normalise by this call's tokens (TRL's per-process semantics). python/grpo_swift/
 * distributed.py documents and implements the cross-process parts.
 *
 * Masked positions (m = 0) never affect anything, whatever they hold (NaN/inf included); a fully
 * masked batch gives loss 0 and gradient 0. Deviations from TRL (both only where TRL would read
 * masked positions): vespo sums the log IS ratio over valid tokens only (TRL sums all T;
 * identical when padding holds ratio 1, as TRL's own pipeline produces); with T == 1 the
 * metrics are token means over valid tokens (TRL's (B,1) branch averages every row).
 * Metrics follow TRL's shapes otherwise: with sequence-level ratios and per-row advantages the
 * clip ratios / cispo_clip_ratio are means over all B rows; vespo/phi_seq_mean is a mean over
 * rows for per-row advantages, over valid tokens for (B,T) advantages.
 * Precision: the per-token maths runs in float for f32/bf16/f16 inputs, in double for f64.
 * float32 inputs with one advantage per row take SIMD8 paths (FMA polynomial exp/expm1, a
 * few ulp) for every TRL 1.16 loss type and level, except a per-token IS ratio with a non-vespo
 * loss and token-level vespo with bias-corrected KL; gmpo, sequence_token, dual clip, a KL
 * estimator other than k3 and the KL clamp always take the scalar path;
 * other inputs take the scalar path. k3 KL is expm1(d) - d (TRL computes exp(d) - d - 1;
 * parity within tolerance).
 */

/** Loss variants (TRL's `loss_type`). */
typedef enum grpo_loss_type {
    GRPO_LOSS_GRPO = 0,
    GRPO_LOSS_BNPO = 1,
    GRPO_LOSS_DR_GRPO = 2,
    GRPO_LOSS_DAPO = 3,
    GRPO_LOSS_LUSPO = 4,
    GRPO_LOSS_CISPO = 5,
    GRPO_LOSS_SAPO = 6,
    GRPO_LOSS_VESPO = 7,
    /** Geometric-mean policy optimisation (TRL 1.16 experimental GMPOTrainer), see above. */
    GRPO_LOSS_GMPO = 8
} grpo_loss_type;

/** TRL's `importance_sampling_level`. */
typedef enum grpo_importance_sampling_level {
    GRPO_IS_TOKEN = 0,
    GRPO_IS_SEQUENCE = 1,
    /** GSPO-token: value of the sequence ratio, gradient of a token ratio (see above). */
    GRPO_IS_SEQUENCE_TOKEN = 2
} grpo_importance_sampling_level;

/**
 * Per-token KL estimators of the beta term (Schulman 2020, "Approximating KL divergence"; verl's
 * kl_penalty names in brackets), with d = ref - lp and x = lp - ref = -d. Gradients are d/d lp.
 *   K3     exp(d) - d - 1 ("low_var_kl"; TRL's; computed as expm1(d) - d)   gradient 1 - exp(d)
 *   K1     x ("kl")                                                          gradient 1
 *   K2     x^2 / 2 ("mse")                                                   gradient x
 *   ABS    |x|                                                               gradient sign(x) (0 at 0)
 *   K1_PLUS, K3_PLUS, ABS_PLUS: straight-through, k2 - sg(k2) + sg(X): the value of k1 / k3 / abs,
 *          the gradient x of k2 (verl documents "k1+"/"k3+"; at verl commit b178a3cd (2026-01-29)
 *          kl_penalty("k3+") raises NotImplementedError: kl_penalty_forward is called with the "+"
 *          suffix, which it does not recognise).
 * Clamp (use_kl_clamp): the value becomes clamp(X, -kl_clamp, kl_clamp) (verl clamps k3 to
 * [-10, 10] and d to [-20, 20], which cannot change a value clamped at 10); a clamped value has
 * gradient 0 (torch.clamp's, strictly inside the bounds only), except for the straight-through
 * variants, whose gradient stays x. Off by default (TRL does not clamp).
 * With use_bias_correction_kl the term is X r: gradient dX r + X r at token level (and for
 * sequence_token, r = s_i), dX r plus X times the sequence coupling d r_i / d lp_t at sequence
 * level (dX = k2's x for the straight-through variants). The `kl` metric is the token mean of the
 * (clamped, bias-corrected) estimate over valid tokens.
 */
typedef enum grpo_kl_estimator {
    GRPO_KL_K3 = 0,
    GRPO_KL_K1 = 1,
    GRPO_KL_K2 = 2,
    GRPO_KL_ABS = 3,
    GRPO_KL_K1_PLUS = 4,
    GRPO_KL_K3_PLUS = 5,
    GRPO_KL_ABS_PLUS = 6
} grpo_kl_estimator;

/** Hyper-parameters of the policy loss (names as in TRL's GRPOConfig). */
typedef struct grpo_loss_config {
    /** A grpo_loss_type value. */
    int32_t loss_type;
    /** A grpo_importance_sampling_level value. */
    int32_t importance_sampling_level;
    /** 1: multiply the KL term by the importance ratio (use_bias_correction_kl). */
    int32_t use_bias_correction_kl;
    /** 1: two-sided clipping, the ratio's unclipped branch is capped at `delta`. */
    int32_t use_delta;
    /** 1: off-policy sequence mask with `off_policy_mask_threshold`. */
    int32_t use_off_policy_mask;
    int32_t reserved;
    /** KL coefficient; != 0 requires ref_logps. */
    double beta;
    /** Lower clip epsilon (TRL `epsilon`). */
    double epsilon;
    /** Upper clip epsilon (TRL resolves `epsilon_high=None` to `epsilon`: the caller does). For
        cispo, the absolute cap on the ratio. */
    double epsilon_high;
    double delta;
    double off_policy_mask_threshold;
    /** In [0, 1]; 1 disables the high-entropy mask; < 1 requires entropies. */
    double top_entropy_quantile;
    /** Entropy bonus coefficient; != 0 requires entropies. */
    double entropy_coef;
    /** > 0. */
    double sapo_temperature_pos;
    double sapo_temperature_neg;
    double vespo_k_pos;
    double vespo_lambda_pos;
    double vespo_k_neg;
    double vespo_lambda_neg;
    /** N for dapo/cispo/vespo: global active tokens of the generation batch (>= 0). A negative
        value means "the active tokens of this call" (single process, one micro-batch). */
    double num_items_in_batch;
    /** W >= 1. */
    ptrdiff_t num_processes;
    /** GA >= 1 (TRL's current_gradient_accumulation_steps). */
    ptrdiff_t gradient_accumulation_steps;
    /** S >= 1, or 0 for "= GA" (TRL's default). */
    ptrdiff_t steps_per_generation;
    /** >= 1, required by dr_grpo (0 = not given). */
    ptrdiff_t max_completion_length;
    /* Appended by issue 11 (a zero-filled struct keeps TRL's behaviour). */
    /** A grpo_kl_estimator value (0 = k3, TRL's). */
    int32_t kl_estimator;
    /** 1: clamp the per-token KL estimate to [-kl_clamp, kl_clamp] (kl_clamp > 0, finite). */
    int32_t use_kl_clamp;
    /** 1: dual-clip PPO with clip_ratio_c (> 1, finite; clipped loss types only). */
    int32_t use_clip_ratio_c;
    int32_t reserved2;
    double kl_clamp;
    double clip_ratio_c;
    /* Appended by issue 9 (multi-process). */
    /** 1: the high-entropy mask uses `entropy_threshold` instead of the quantile of this call's
        valid entropies (requires top_entropy_quantile < 1). Multi-process training: TRL's
        get_high_entropy_mask takes torch.quantile of the entropies gathered from every process;
        the caller computes that threshold and passes it here. 0: computed by the kernel. */
    int32_t use_entropy_threshold;
    int32_t reserved_entropy_threshold;
    /** A token is high-entropy when its entropy >= this value, compared in the per-token
        precision (float32, float64 for GRPO_F64 inputs). NaN selects no token (TRL's empty or
        NaN quantile). Read only when use_entropy_threshold == 1. */
    double entropy_threshold;
} grpo_loss_config;

/**
 * Inputs of grpo_policy_loss. Every array is dense row-major.
 * `dtype` (a grpo_dtype) is the element type of logps, old_logps, ref_logps, sampling_logps and
 * entropies (each (B,T)); bf16 is raw 16-bit bits. `aux_dtype` is the element type of
 * advantages and importance_sampling_ratio (any grpo_dtype; TRL keeps them float32).
 */
typedef struct grpo_loss_inputs {
    /** B >= 1 rows, T >= 0 positions. */
    ptrdiff_t batch;
    ptrdiff_t length;
    int32_t dtype;
    int32_t aux_dtype;
    /** (B,T), required. */
    const void *logps;
    /** (B,T) or NULL (on-policy: old = stop_grad(logps)). */
    const void *old_logps;
    /** (B,T); required when beta != 0, otherwise ignored except for the kl metric. */
    const void *ref_logps;
    /** (B,T) or NULL: the sampler's log-probs for the off-policy mask (defaults to old). */
    const void *sampling_logps;
    /** (B,T) or NULL: per-token entropies (high-entropy mask, entropy bonus, entropy metric). */
    const void *entropies;
    /** (B, advantages_cols), required; advantages_cols is 1 or T. */
    const void *advantages;
    ptrdiff_t advantages_cols;
    /** (B,T) 0/1 (any other byte value is an error). */
    const uint8_t *mask;
    /** (B, importance_sampling_ratio_cols) or NULL: vLLM importance-sampling ratio, cols 1 or T
        (vespo requires T). */
    const void *importance_sampling_ratio;
    ptrdiff_t importance_sampling_ratio_cols;
} grpo_loss_inputs;

/**
 * Scalars of one call. Metric names follow TRL's logged keys; a metric TRL would not log for
 * this configuration is NaN (kl without ref_logps, entropy without entropies, clip ratios for
 * other loss types, ...).
 */
typedef struct grpo_loss_metrics {
    /** The loss (what TRL's _compute_loss returns) = policy_term + kl_term + entropy_term. */
    double loss;
    /** TRL's logged `policy_loss`: the aggregated policy+KL loss before the division by GA
        (grpo, bnpo, dr_grpo, luspo, sapo) or after the normaliser (dapo, cispo, vespo). */
    double policy_loss;
    /** Contribution of the policy term (l without beta kl) to loss. */
    double policy_term;
    /** Contribution of beta * kl to loss. */
    double kl_term;
    /** Contribution of the entropy bonus to loss (<= 0 for a positive coefficient). */
    double entropy_term;
    /** kl: token mean of the (bias-corrected) kl over valid tokens (NaN without ref_logps). */
    double kl;
    /** entropy: token mean of entropies over valid tokens (NaN without entropies). */
    double entropy;
    double clip_ratio_low_mean;
    double clip_ratio_high_mean;
    double clip_ratio_region_mean;
    double clip_ratio_low_min;
    double clip_ratio_high_max;
    double cispo_clip_ratio;
    double vespo_phi_seq_mean;
    /** sum m, and the tokens the policy term acts on after the high-entropy mask. */
    double num_tokens;
    double num_entropy_tokens;
    /** Rows dropped (whole or in part) by the off-policy mask. */
    double num_off_policy_dropped;
    /** verl's pg_clipfrac_lower (dual-clip PPO, see above); NaN when use_clip_ratio_c is 0. */
    double pg_clipfrac_lower;
} grpo_loss_metrics;

/**
 * Computes the loss, d loss / d logps and d loss / d entropies, and the metrics.
 *
 * grad:           (B,T) or NULL (loss and metrics only). float32, or float64 when dtype is f64.
 *                 Masked positions get 0.
 * grad_entropies: (B,T), same type as grad: required when grad != NULL and entropy_coef != 0,
 *                 must be NULL otherwise (grad_entropies = -entropy_coef e / max(sum e,1) / GA).
 * metrics:        required.
 * Accumulation: per-token maths in the input precision (float for f32/bf16/f16, double for
 * f64), every sum in double. Parallel over rows; bitwise identical for any thread count.
 * Errors: NULL (required pointer), SHAPE (sizes, cols), DTYPE, VALUE (unknown enum, invalid
 * hyper-parameter, missing ref_logps with beta != 0, missing max_completion_length for dr_grpo,
 * non-positive normalisers, a mask byte other than 0/1, vespo with a per-sequence IS ratio;
 * gmpo with (B,T) advantages, an IS ratio, a non-token level, delta, bias-corrected KL or the
 * off-policy mask; kl_clamp <= 0 or not finite; clip_ratio_c <= 1, not finite, or with a
 * non-clipped loss type; an unknown kl_estimator).
 */
grpo_status grpo_policy_loss(const grpo_loss_inputs *inputs, const grpo_loss_config *cfg,
                             void *grad, void *grad_entropies, grpo_loss_metrics *metrics,
                             char *err, size_t errlen);

/**
 * Rounds a float32 array to another element type: out[i] = round(scale * in[i]), the product in
 * float32, the rounding to nearest with ties to even (NaN stays a NaN, quiet for bfloat16;
 * overflow gives +-inf). Hands a float32 gradient such as grpo_policy_loss's to a caller whose
 * inputs are 16-bit: the same bits as torch's `(scale * g).to(dtype)`.
 *
 * out_dtype: GRPO_BF16 (out is uint16 bit patterns), GRPO_F16 or GRPO_F32; out has n elements
 *            and must not overlap in (GRPO_F32 may be in-place: out == in).
 * Single-threaded (a memory-bound pass). Errors: NULL, SHAPE (n < 0), DTYPE (out_dtype).
 */
grpo_status grpo_convert_f32(const float *in, ptrdiff_t n, float scale, int32_t out_dtype, void *out,
                             char *err, size_t errlen);


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
 * Threads: grpo_get_num_threads() workers each run single-threaded sgemm calls on fixed
 * sub-blocks (bitwise identical results for any thread count); the fused functions
 * therefore set OpenBLAS's own thread count to 1 (openblas_set_num_threads, process-wide).
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
 * As grpo_fused_log_probs_f32 for bfloat16 hidden, weight and bias (uint16 bit patterns).
 * Each row block of hidden and each vocabulary slice of weight/bias is widened exactly to
 * float32 in scratch before its GEMMs; all arithmetic and outputs are float32.
 */
grpo_status grpo_fused_log_probs_bf16(const uint16_t *hidden, const uint16_t *weight,
                                      const uint16_t *bias, ptrdiff_t n, ptrdiff_t hidden_size,
                                      ptrdiff_t vocab, const int64_t *targets,
                                      const grpo_lm_head_config *cfg, float *log_probs,
                                      float *entropy, double *logsumexp, char *err, size_t errlen);

/** As grpo_fused_log_probs_backward_f32 for bfloat16 inputs; gradients are float32. */
grpo_status grpo_fused_log_probs_backward_bf16(
    const uint16_t *hidden, const uint16_t *weight, const uint16_t *bias, ptrdiff_t n,
    ptrdiff_t hidden_size, ptrdiff_t vocab, const int64_t *targets,
    const grpo_lm_head_config *cfg, const double *logsumexp, const float *entropy,
    const float *grad_log_probs, const float *grad_entropy, float *grad_hidden,
    float *grad_weight, float *grad_bias, char *err, size_t errlen);

/**
 * Bytes of scratch one fused forward or backward call allocates for these sizes and input
 * dtype (GRPO_F32 or GRPO_BF16): min(n, tile_rows) x min(vocab, tile_cols) floats plus 4
 * floats per tile row (16 MiB + 16 KiB with the default tiles); for bfloat16 also
 * (tile_rows + tile_cols) x hidden_size + tile_cols floats for the widened inputs. Bounded
 * independently of n and vocab. Written to *bytes.
 */
grpo_status grpo_fused_log_probs_scratch_bytes(ptrdiff_t n, ptrdiff_t hidden_size,
                                               ptrdiff_t vocab, const grpo_lm_head_config *cfg,
                                               int32_t dtype, ptrdiff_t *bytes, char *err,
                                               size_t errlen);

/**
 * Benchmark anchor: one plain row-major cblas_sgemm c (m x n) = a (m x k) b^T (b is n x k)
 * with OpenBLAS's own threading set to grpo_get_num_threads(). Not a kernel of the library.
 */
grpo_status grpo_benchmark_sgemm_nt_f32(const float *a, const float *b, ptrdiff_t m,
                                        ptrdiff_t n, ptrdiff_t k, float *c,
                                        char *err, size_t errlen);

/* ==== advantage estimators: section owned by issue 11 ==== */

/*
 * Advantage estimators of the literature over EXPLICIT groups: rows with equal int64
 * group_ids form a group (any values, any order, variable sizes); or, when group_ids is
 * NULL, groups of cfg->num_generations consecutive rows. Within a group rows are visited in
 * ascending row order, so results do not depend on how the ids are numbered or permuted.
 *
 * Notation: r_i the reward of row i; NaN marks an unscorable row (advantage 0, excluded from
 * every statistic); +-inf is an error. k_g the scorable rows of group g, mu_g their mean,
 * sd_g their Bessel-corrected std (two-pass, in double). N = n rows.
 *
 *   GRPO        A = (r - mu_g) / (s + eps), s = sd_g (scale_rewards GROUP), the std of all
 *               scorable rewards (BATCH), or no division (NONE = Dr.GRPO). TRL 1.16.
 *   RLOO        A = r - mean of the other scorable rows = (r - mu_g) k_g / (k_g - 1); with
 *               normalize = 1 then (A - mean(A)) / (std(A) + eps) over scorable rows (TRL's
 *               RLOOTrainer normalize_advantages).
 *   OPO         A = r - sum_j L_j r_j / sum_j L_j (L = lengths[], response lengths >= 0); a
 *               group whose lengths sum to 0 gets 0.
 *   GPG         A = alpha (r - mu_g) / gpg_f_norm, alpha = N / max(M, 1); gpg_alpha_mode
 *               INFORMATIVE: M = scorable rows of groups with max > min (the GPG paper);
 *               NONZERO: M = scorable rows with r != 0 (verl); FIXED: alpha = gpg_alpha.
 *   PASSK       per group the first row holding the maximum gets (r_max - r_second), divided
 *               by (sd_g + eps) when scale_rewards is GROUP (NONE: no division; BATCH is an
 *               error); every other row 0 (verl's GRPO pass@k).
 *   REINFORCE_PP           token level: R_t = r_t + gamma R_{t+1} over kept tokens, scanning back
 *               from each row's last kept token; a masked-out position inside a row passes the
 *               running return through unchanged (cfg->masked_returns CARRY: verl 0.9.1, where
 *               such positions are tool observations of a multi-turn rollout) or restarts it at
 *               0 (RESET: verl before verl-project/verl#7300); rewards at masked positions are
 *               ignored. Then whitened over all kept tokens of all scorable rows:
 *               (R - mean) / sqrt(var + eps), var Bessel-corrected. R itself is verl's second
 *               output ("returns"): grpo_token_advantages_returns_*.
 *   REINFORCE_PP_BASELINE  token level: a_i = r_i - mu_g on each kept token, whitened as above.
 *
 * Singleton groups (exactly one scorable row), singleton policy:
 *   ZERO (0)  advantage 0, and excluded from batch statistics of advantages (TRL GRPO/RLOO);
 *   RAW (1)   baseline 0 and std 1: A = r / (1 + eps) (grpo, GROUP scale), r (rloo, opo,
 *             rf++-baseline before whitening), alpha r / f_norm (gpg) -- verl's choice;
 *   ERROR (2) GRPO_ERR_VALUE naming the group id (verl's pass@k). RAW is an error for PASSK.
 * A group without scorable rows always gets 0. Unscorable rows always get 0.
 */

typedef enum grpo_estimator {
    GRPO_EST_GRPO = 0,
    GRPO_EST_RLOO = 1,
    GRPO_EST_OPO = 2,
    GRPO_EST_GPG = 3,
    GRPO_EST_PASSK = 4,
    GRPO_EST_REINFORCE_PP = 5,
    GRPO_EST_REINFORCE_PP_BASELINE = 6
} grpo_estimator;

typedef enum grpo_singleton_policy {
    GRPO_SINGLETON_ZERO = 0,
    GRPO_SINGLETON_RAW = 1,
    GRPO_SINGLETON_ERROR = 2
} grpo_singleton_policy;

typedef enum grpo_masked_returns {
    GRPO_MASKED_RETURNS_CARRY = 0,
    GRPO_MASKED_RETURNS_RESET = 1
} grpo_masked_returns;

typedef enum grpo_gpg_alpha {
    GRPO_GPG_ALPHA_INFORMATIVE = 0,
    GRPO_GPG_ALPHA_NONZERO = 1,
    GRPO_GPG_ALPHA_FIXED = 2
} grpo_gpg_alpha;

typedef struct grpo_estimator_config {
    /** Consecutive group size used when group_ids is NULL (>= 1; n must be a multiple). */
    ptrdiff_t num_generations;
    /** A grpo_estimator value. */
    int32_t estimator;
    /** A grpo_singleton_policy value. */
    int32_t singleton;
    /** A grpo_scale_rewards value (GRPO: any; PASSK: GROUP or NONE; others: ignored). */
    int32_t scale_rewards;
    /** RLOO: 1 = batch z-score of the advantages, 0 = none. Ignored otherwise. */
    int32_t normalize;
    /** A grpo_gpg_alpha value (GPG only). */
    int32_t gpg_alpha_mode;
    /** A grpo_masked_returns value (REINFORCE_PP only; 0 = CARRY). Was `reserved` (0) before. */
    int32_t masked_returns;
    /** >= 0. Added to the std (GRPO, RLOO normalize, PASSK) or the variance (REINFORCE_PP*). */
    double epsilon;
    /** REINFORCE_PP discount in [0, 1]. */
    double gamma;
    /** GPG alpha when gpg_alpha_mode is FIXED (> 0). */
    double gpg_alpha;
    /** GPG f_norm (> 0). */
    double gpg_f_norm;
} grpo_estimator_config;

/**
 * One advantage per row (estimators GRPO, RLOO, OPO, GPG, PASSK).
 *
 * rewards:    (n) one scalar reward per row; NaN = unscorable.
 * group_ids:  (n) int64 or NULL (then groups of cfg->num_generations consecutive rows).
 * lengths:    (n) response lengths (finite, >= 0) for OPO; may be NULL for the others.
 * advantages: (n) written.
 */
grpo_status grpo_estimator_advantages_f64(const double *rewards, ptrdiff_t n,
                                          const int64_t *group_ids, const double *lengths,
                                          const grpo_estimator_config *cfg, double *advantages,
                                          char *err, size_t errlen);

/** As grpo_estimator_advantages_f64 for float32 (double accumulation). */
grpo_status grpo_estimator_advantages_f32(const float *rewards, ptrdiff_t n,
                                          const int64_t *group_ids, const float *lengths,
                                          const grpo_estimator_config *cfg, float *advantages,
                                          char *err, size_t errlen);

/**
 * Token-level advantages (estimators REINFORCE_PP, REINFORCE_PP_BASELINE).
 *
 * rewards:       (n, reward_cols) with reward_cols 1 (an outcome reward, placed on the row's
 *                last kept token) or t (token rewards; REINFORCE_PP only). NaN = unscorable
 *                row (for token rewards: a NaN at a kept position; masked ones are ignored).
 * response_mask: (n, t) uint8, nonzero = kept token.
 * group_ids:     (n) or NULL (consecutive groups); used by REINFORCE_PP_BASELINE only.
 * advantages:    (n, t) written; 0 at masked positions and on unscorable rows, and everywhere
 *                when fewer than 2 tokens enter the whitening.
 */
grpo_status grpo_token_advantages_f64(const double *rewards, ptrdiff_t n, ptrdiff_t t,
                                      ptrdiff_t reward_cols, const uint8_t *response_mask,
                                      const int64_t *group_ids, const grpo_estimator_config *cfg,
                                      double *advantages, char *err, size_t errlen);

/** As grpo_token_advantages_f64 for float32 (double accumulation). */
grpo_status grpo_token_advantages_f32(const float *rewards, ptrdiff_t n, ptrdiff_t t,
                                      ptrdiff_t reward_cols, const uint8_t *response_mask,
                                      const int64_t *group_ids, const grpo_estimator_config *cfg,
                                      float *advantages, char *err, size_t errlen);

/**
 * As grpo_token_advantages_f64, and also writes
 * returns: (n, t) or NULL. REINFORCE_PP only (non-NULL with another estimator is
 *          GRPO_ERR_VALUE): the un-whitened discounted returns R_t of the kept tokens (verl's
 *          second output of compute_reinforce_plus_plus_outcome_advantage), 0 at masked
 *          positions and on unscorable rows; written even when the advantages are all 0.
 * With returns == NULL this is exactly grpo_token_advantages_f64.
 */
grpo_status grpo_token_advantages_returns_f64(const double *rewards, ptrdiff_t n, ptrdiff_t t,
                                              ptrdiff_t reward_cols, const uint8_t *response_mask,
                                              const int64_t *group_ids,
                                              const grpo_estimator_config *cfg, double *advantages,
                                              double *returns, char *err, size_t errlen);

/** As grpo_token_advantages_returns_f64 for float32 (double accumulation). */
grpo_status grpo_token_advantages_returns_f32(const float *rewards, ptrdiff_t n, ptrdiff_t t,
                                              ptrdiff_t reward_cols, const uint8_t *response_mask,
                                              const int64_t *group_ids,
                                              const grpo_estimator_config *cfg, float *advantages,
                                              float *returns, char *err, size_t errlen);

/**
 * DAPO dynamic sampling: zero_spread[i] = 1 when row i's group has zero reward spread, i.e.
 * fewer than 2 scorable rows or max - min <= tolerance over its scorable rows (every row of
 * the group, scorable or not, gets the group's flag); else 0.
 * rewards (n); group_ids (n) or NULL with num_generations >= 1; tolerance finite >= 0.
 */
grpo_status grpo_zero_spread_groups_f64(const double *rewards, ptrdiff_t n,
                                        const int64_t *group_ids, ptrdiff_t num_generations,
                                        double tolerance, uint8_t *zero_spread,
                                        char *err, size_t errlen);

/** As grpo_zero_spread_groups_f64 for float32 rewards. */
grpo_status grpo_zero_spread_groups_f32(const float *rewards, ptrdiff_t n,
                                        const int64_t *group_ids, ptrdiff_t num_generations,
                                        double tolerance, uint8_t *zero_spread,
                                        char *err, size_t errlen);
/* ==== fused linear GRPO loss: section owned by issue 7 ==== */

/*
 * The GRPO loss straight from the last hidden states and the LM-head weight (Liger-Kernel's
 * LigerFusedLinearGRPOLoss, TRL 1.16's loss): per-token lp and H of
 * logits = (hidden weight^T + bias) * logit_scale (softcapped) / temperature as in
 * grpo_fused_log_probs_f32, then exactly grpo_policy_loss on (lp, H), then the gradients
 *   d loss/d logits_iv = g_i (1[v = t_i] - p_iv) - gH_i p_iv (log p_iv + H_i)  (through scale,
 *   softcap, temperature), grad_hidden = G weight, grad_weight = G^T hidden, grad_bias = sum_i G,
 * with g = d loss/d lp and gH = d loss/d H from the loss kernel. The n x vocab logits are never
 * stored whole. Two schedules (same results within float32 rounding; loss and metrics always
 * from one loss-kernel call on the whole batch):
 *   3 GEMM passes (float32 inputs, top_entropy_quantile == 1, and one sequence's resident
 *   scratch, length x (vocab + 16 + 3 ceil(vocab / 2048) + 1 + (groups - 1) hidden_size) x 4
 *   bytes with groups = min(8, ceil(vocab / 2048)), <= scratch_budget): per block of whole
 *   sequences (the fewest balanced blocks that fit), sgemm the block's logits into scratch 2048
 *   vocabulary columns at a time, folding each chunk (lp, H statistics) while it is in cache, the
 *   loss kernel on the block (its normalisers depend only on the mask, so g is exact after a
 *   known rescale), logits overwritten with G, then grad_weight and grad_hidden by sgemm over
 *   8 vocabulary groups (grad_hidden as the group-ordered sum of 8 partial products). Extra
 *   memory: one block's resident scratch (<= scratch_budget).
 *   4 GEMM passes (otherwise): pass 1 (one sgemm per tile + online log-sum-exp) over all rows,
 *   the loss kernel, pass 2 (tile recomputed, overwritten with G, two sgemms). Extra memory: one
 *   tile (grpo_fused_log_probs_scratch_bytes).
 * Plus 24 bytes per row (28 with ref_hidden): grpo_fused_linear_loss_scratch_bytes.
 * Results are bitwise identical for any thread count.
 */

/** Inputs of grpo_fused_linear_loss. n = batch * length rows; row-major, dense. */
typedef struct grpo_fused_loss_inputs {
    /** batch >= 1, length >= 0, hidden_size >= 1, vocab >= 1. */
    ptrdiff_t batch;
    ptrdiff_t length;
    ptrdiff_t hidden_size;
    ptrdiff_t vocab;
    /** GRPO_F32 or GRPO_BF16 (uint16 bits): the type of hidden, weight, bias, ref_hidden,
        ref_weight, ref_bias. Arithmetic and gradients are float32. */
    int32_t dtype;
    /** grpo_dtype of advantages and importance_sampling_ratio. */
    int32_t aux_dtype;
    /** (n, hidden_size), required. */
    const void *hidden;
    /** (vocab, hidden_size), required. */
    const void *weight;
    /** (vocab) or NULL. */
    const void *bias;
    /** (n) int64 token ids in [0, vocab); a negative id only where mask is 0 (not scored). */
    const int64_t *selected_token_ids;
    /** (n) 0/1. */
    const uint8_t *mask;
    /** (batch, advantages_cols), cols 1 or length. */
    const void *advantages;
    ptrdiff_t advantages_cols;
    /** (n) float32 each, or NULL: old (NULL = on-policy), ref, sampler log-probs. */
    const float *old_logps;
    const float *ref_logps;
    const float *sampling_logps;
    /** Used when ref_logps is NULL: reference hidden (n, hidden_size), weight and bias (as
        hidden/weight/bias; NULL = none): ref log-probs computed under no grad. */
    const void *ref_hidden;
    const void *ref_weight;
    const void *ref_bias;
    /** (batch, importance_sampling_ratio_cols) or NULL, cols 1 or length. */
    const void *importance_sampling_ratio;
    ptrdiff_t importance_sampling_ratio_cols;
    /** Bytes of resident scratch the 3-GEMM schedule may use (>= 0; 0 = the default,
        min(256 MiB, n x vocab x 2): half the logits at most, never an n x vocab buffer).
        A budget below one sequence's resident scratch (see above; a little more than
        length x vocab x 4) selects the 4-GEMM schedule. */
    ptrdiff_t scratch_budget;
} grpo_fused_loss_inputs;

/**
 * Loss, metrics and gradients in one call.
 * grad_hidden (n, hidden_size), grad_weight (vocab, hidden_size), grad_bias (vocab; requires
 * bias): float32, each NULL (not computed) or OVERWRITTEN. log_probs, entropy: (n) float32 or
 * NULL, receive pass 1's per-token values. metrics: required (as grpo_policy_loss).
 * Errors: NULL, SHAPE, DTYPE, VALUE as grpo_policy_loss and grpo_fused_log_probs_f32 (a target
 * >= vocab, or < 0 at a valid position, is VALUE); NO_MEMORY when the scratch cannot be mapped.
 */
grpo_status grpo_fused_linear_loss(const grpo_fused_loss_inputs *inputs, const grpo_loss_config *loss_cfg,
                                   const grpo_lm_head_config *head_cfg, float *grad_hidden,
                                   float *grad_weight, float *grad_bias, float *log_probs,
                                   float *entropy, grpo_loss_metrics *metrics, char *err, size_t errlen);

/**
 * Bytes of memory grpo_fused_linear_loss allocates besides its outputs (an upper bound) for
 * batch x length rows (dtype GRPO_F32 or GRPO_BF16; ref_from_hidden 1 when ref log-probs come
 * from ref_hidden; top_entropy_quantile_below_one 1 when that option is < 1; scratch_budget as
 * in grpo_fused_loss_inputs).
 */
grpo_status grpo_fused_linear_loss_scratch_bytes(ptrdiff_t batch, ptrdiff_t length, ptrdiff_t hidden_size,
                                                 ptrdiff_t vocab, const grpo_lm_head_config *head_cfg,
                                                 int32_t dtype, int32_t ref_from_hidden,
                                                 int32_t top_entropy_quantile_below_one,
                                                 ptrdiff_t scratch_budget, ptrdiff_t *bytes, char *err,
                                                 size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* GRPO_SWIFT_H */
