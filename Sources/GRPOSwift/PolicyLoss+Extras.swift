// Policy-loss options beyond TRL 1.16's GRPOTrainer (issue 11): KL estimators (k1, k2, k3, abs
// and the straight-through "+" variants, optionally clamped), GMPO (TRL 1.16's experimental
// GMPOTrainer), the GSPO-token importance-sampling level and dual-clip PPO (verl's
// clip_ratio_c). The maths is documented in CBridge/include/grpo_swift.h (section "policy
// loss"). The kernel (PolicyLoss+Kernel.swift) evaluates these per token on its scalar path;
// the SIMD fast paths (PolicyLoss+Fast.swift) implement TRL's configuration only, and
// `LossConfig.needsScalarPath` routes every other configuration to the scalar path.

/// The per-token KL estimator of the `beta` term, with d = ref - lp and x = lp - ref = -d
/// (Schulman, "Approximating KL divergence"; verl's `kl_penalty` names in brackets).
public enum KLEstimator: Int32, Sendable, CaseIterable {
    /// exp(d) - d - 1 ("low_var_kl"), TRL's estimator and the default. Gradient 1 - exp(d).
    case k3 = 0
    /// x ("kl"). Gradient 1.
    case k1 = 1
    /// x^2 / 2 ("mse"). Gradient x.
    case k2 = 2
    /// |x|. Gradient sign(x) (0 at x = 0, as torch).
    case abs = 3
    /// Straight-through: the value of k1, the gradient of k2 (x).
    case k1Plus = 4
    /// Straight-through: the value of k3, the gradient of k2 (x).
    case k3Plus = 5
    /// Straight-through: the value of abs, the gradient of k2 (x).
    case absPlus = 6

    /// The name used by the Python API (verl's names without its aliases).
    public var name: String {
        switch self {
        case .k3: return "k3"
        case .k1: return "k1"
        case .k2: return "k2"
        case .abs: return "abs"
        case .k1Plus: return "k1+"
        case .k3Plus: return "k3+"
        case .absPlus: return "abs+"
        }
    }

    /// Value of k2's gradient, not of the estimator's own.
    public var isStraightThrough: Bool { self == .k1Plus || self == .k3Plus || self == .absPlus }

    /// (value, d value / d lp) at d = ref - lp. `clamp` (> 0, or nil): the value is clamped to
    /// [-clamp, clamp]; a clamped value has gradient 0 (torch.clamp passes the gradient only
    /// strictly inside its bounds) except for the straight-through variants, whose gradient is
    /// k2's whatever the value.
    @inline(__always)
    func evaluate<R: LossReal>(_ d: R, clamp: R?) -> (value: R, grad: R) {
        var v: R, g: R
        switch self {
        case .k3:
            let (em1, kl) = R.expm1AndKL(d)
            v = kl; g = -em1
        case .k1: v = -d; g = 1
        case .k2: v = (d * d) / 2; g = -d
        case .abs: v = Swift.abs(d); g = d < 0 ? 1 : (d > 0 ? -1 : 0)
        case .k1Plus: v = -d; g = -d
        case .k3Plus: v = R.expm1AndKL(d).kl; g = -d
        case .absPlus: v = Swift.abs(d); g = -d
        }
        if let c = clamp, !v.isNaN {
            if !(v > -c && v < c) && !isStraightThrough { g = 0 }
            v = Swift.min(Swift.max(v, -c), c)
        }
        return (v, g)
    }
}

/// One token of GMPO (TRL 1.16 trl.experimental.gmpo.GMPOTrainer._compute_loss).
struct GMPOToken<R: LossReal> {
    /// The sign-aware clipped log-ratio and its derivative w.r.t. the log-ratio.
    var value: R, grad: R
    var low: Bool, high: Bool
}

extension PolicyLoss {
    /// GMPO's per-token clipping in log space, with torch's gradients: c = clamp(lr, -epsLow,
    /// epsHigh) (gradient only strictly inside), then minimum(lr, c) for A > 0 and maximum(lr, c)
    /// otherwise (a tie sends half of the gradient to each argument). Metric flags as TRL logs
    /// them: lr < -epsLow with A < 0 (low), lr > epsHigh with A > 0 (high).
    @inline(__always)
    static func gmpoToken<R: LossReal>(_ lr: R, a: R, epsLow: R, epsHigh: R) -> GMPOToken<R> {
        let lo = -epsLow
        let c = Swift.min(Swift.max(lr, lo), epsHigh)
        let dc: R = (lr > lo && lr < epsHigh) ? 1 : 0
        var t = GMPOToken<R>(value: lr, grad: 1, low: lr < lo && a < 0, high: lr > epsHigh && a > 0)
        if lr.isNaN {
            t.grad = .nan
        } else if a > 0 ? lr > c : lr < c {
            t.value = c; t.grad = dc
        } else if lr == c {
            t.grad = (1 + dc) / 2
        }
        return t
    }

    /// Dual-clip PPO (verl compute_policy_loss_vanilla): for A < 0 the clipped-family loss l is
    /// replaced by min(l, -A c) with torch.min's gradient: `g`, a derivative of l, becomes 0 when
    /// capped and g / 2 on a tie. Returns verl's pg_clipfrac_lower indicator: l > -A c and A < 0.
    @inline(__always)
    static func dualClip<R: LossReal>(_ l: inout R, _ g: inout R, a: R, c: R) -> Bool {
        guard a < 0 else { return false }
        let cap = -a * c
        if l > cap {
            l = cap; g = 0
            return true
        }
        if l == cap { g = g / 2 }
        return false
    }
}

extension LossConfig {
    /// Options the SIMD fast paths (PolicyLoss+Fast.swift) do not implement: the kernel routes
    /// such configurations to its scalar path. TRL's configurations never set any of them.
    var needsScalarPath: Bool {
        lossType == .gmpo || importanceSamplingLevel == .sequenceToken || clipRatioC != nil
            || klEstimator != .k3 || klClamp != nil
    }

    /// The KL estimator's clamp in the per-token precision (nil: off).
    func klClampValue<R: LossReal>(_: R.Type) -> R? { klClamp.map { R($0) } }

    /// Validation of the options of this file (called by `validate`).
    func validateExtras() throws(GRPOError) {
        if let c = klClamp {
            guard c > 0, c.isFinite else {
                throw GRPOError(.value, "kl_clamp must be finite and > 0 (verl uses 10), got \(c)")
            }
        }
        if let c = clipRatioC {
            guard c > 1, c.isFinite else {
                throw GRPOError(.value, "clip_ratio_c must be finite and > 1 (dual-clip PPO; verl uses 3), got \(c)")
            }
            guard lossType.isClipped else {
                throw GRPOError(.value,
                    "clip_ratio_c (dual-clip PPO) applies to the clipped loss types grpo, bnpo, dr_grpo, dapo and "
                    + "luspo, got loss_type '\(lossType.trlName)'")
            }
        }
        if lossType == .gmpo {
            guard importanceSamplingLevel == .token else {
                throw GRPOError(.value,
                    "loss_type 'gmpo' takes the geometric mean of token ratios: importance_sampling_level must be "
                    + "'token', got \(importanceSamplingLevel == .sequence ? "'sequence'" : "'sequence_token'")")
            }
            guard delta == nil else {
                throw GRPOError(.value, "loss_type 'gmpo' clips in log space with epsilon/epsilon_high; delta "
                    + "(two-sided clipping) does not apply, got delta = \(delta ?? 0)")
            }
            guard !useBiasCorrectionKL else {
                throw GRPOError(.value, "loss_type 'gmpo' has no bias-corrected KL (TRL's GMPOTrainer ignores "
                    + "use_bias_correction_kl); pass use_bias_correction_kl = false")
            }
            guard offPolicyMaskThreshold == nil else {
                throw GRPOError(.value, "loss_type 'gmpo' has no off-policy sequence mask (TRL's GMPOTrainer "
                    + "ignores off_policy_mask_threshold)")
            }
        }
    }

    /// Input-dependent checks of the options of this file.
    func validateExtraInputs(advantagesPerToken: Bool, hasImportanceSamplingRatio: Bool) throws(GRPOError) {
        guard lossType == .gmpo else { return }
        if advantagesPerToken {
            throw GRPOError(.value, "loss_type 'gmpo' weights each sequence's geometric-mean ratio by one "
                + "advantage: advantages must have one value per row (B or (B, 1)), got (B, T)")
        }
        if hasImportanceSamplingRatio {
            throw GRPOError(.value, "loss_type 'gmpo' does not apply an importance_sampling_ratio (TRL's "
                + "GMPOTrainer ignores vLLM importance sampling); pass None")
        }
    }
}
