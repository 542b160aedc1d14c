// C ABI: the policy loss (grpo_policy_loss).
import CGRPOBridge

func lossConfig(_ cfg: UnsafePointer<grpo_loss_config>?) throws(GRPOError) -> LossConfig {
    let c = try configValue(cfg, "config")
    guard let type = LossType(rawValue: c.loss_type) else {
        throw GRPOError(.value,
            "loss_type must be 0 (grpo), 1 (bnpo), 2 (dr_grpo), 3 (dapo), 4 (luspo), 5 (cispo), 6 (sapo), "
            + "7 (vespo) or 8 (gmpo), got \(c.loss_type)")
    }
    guard let level = ImportanceSamplingLevel(rawValue: c.importance_sampling_level) else {
        throw GRPOError(.value,
            "importance_sampling_level must be 0 (token), 1 (sequence) or 2 (sequence_token), got "
            + "\(c.importance_sampling_level)")
    }
    func flag(_ v: Int32, _ name: String) throws(GRPOError) -> Bool {
        guard v == 0 || v == 1 else { throw GRPOError(.value, "\(name) must be 0 or 1, got \(v)") }
        return v == 1
    }
    var cfg = LossConfig(lossType: type, importanceSamplingLevel: level)
    cfg.useBiasCorrectionKL = try flag(c.use_bias_correction_kl, "use_bias_correction_kl")
    cfg.delta = try flag(c.use_delta, "use_delta") ? c.delta : nil
    cfg.offPolicyMaskThreshold = try flag(c.use_off_policy_mask, "use_off_policy_mask")
        ? c.off_policy_mask_threshold : nil
    cfg.beta = c.beta
    cfg.epsilon = c.epsilon
    cfg.epsilonHigh = c.epsilon_high
    cfg.topEntropyQuantile = c.top_entropy_quantile
    cfg.entropyCoef = c.entropy_coef
    cfg.sapoTemperaturePos = c.sapo_temperature_pos
    cfg.sapoTemperatureNeg = c.sapo_temperature_neg
    cfg.vespoKPos = c.vespo_k_pos
    cfg.vespoLambdaPos = c.vespo_lambda_pos
    cfg.vespoKNeg = c.vespo_k_neg
    cfg.vespoLambdaNeg = c.vespo_lambda_neg
    if c.num_items_in_batch.isNaN {
        throw GRPOError(.value, "num_items_in_batch must not be NaN")
    }
    cfg.numItemsInBatch = c.num_items_in_batch < 0 ? nil : c.num_items_in_batch
    cfg.numProcesses = c.num_processes
    cfg.gradientAccumulationSteps = c.gradient_accumulation_steps
    guard c.steps_per_generation >= 0 else {
        throw GRPOError(.value, "steps_per_generation must be >= 1 (or 0 for the default), got \(c.steps_per_generation)")
    }
    cfg.stepsPerGeneration = c.steps_per_generation == 0 ? nil : c.steps_per_generation
    guard c.max_completion_length >= 0 else {
        throw GRPOError(.value, "max_completion_length must be >= 1 (or 0 when not given), got \(c.max_completion_length)")
    }
    cfg.maxCompletionLength = c.max_completion_length == 0 ? nil : c.max_completion_length
    guard let estimator = KLEstimator(rawValue: c.kl_estimator) else {
        throw GRPOError(.value,
            "kl_estimator must be 0 (k3), 1 (k1), 2 (k2), 3 (abs), 4 (k1+), 5 (k3+) or 6 (abs+), got \(c.kl_estimator)")
    }
    cfg.klEstimator = estimator
    cfg.klClamp = try flag(c.use_kl_clamp, "use_kl_clamp") ? c.kl_clamp : nil
    cfg.clipRatioC = try flag(c.use_clip_ratio_c, "use_clip_ratio_c") ? c.clip_ratio_c : nil
    cfg.entropyThreshold = try flag(c.use_entropy_threshold, "use_entropy_threshold") ? c.entropy_threshold : nil
    return cfg
}

/// The C struct of a loss call's metrics (grpo_policy_loss and grpo_fused_linear_loss).
func cLossMetrics(_ m: PolicyLossMetrics) -> grpo_loss_metrics {
    grpo_loss_metrics(
        loss: m.loss, policy_loss: m.policyLoss, policy_term: m.policyTerm, kl_term: m.klTerm,
        entropy_term: m.entropyTerm, kl: m.kl, entropy: m.entropy,
        clip_ratio_low_mean: m.clipRatioLowMean, clip_ratio_high_mean: m.clipRatioHighMean,
        clip_ratio_region_mean: m.clipRatioRegionMean, clip_ratio_low_min: m.clipRatioLowMin,
        clip_ratio_high_max: m.clipRatioHighMax, cispo_clip_ratio: m.cispoClipRatio,
        vespo_phi_seq_mean: m.vespoPhiSeqMean, num_tokens: m.numTokens,
        num_entropy_tokens: m.numEntropyTokens, num_off_policy_dropped: m.numOffPolicyDropped,
        pg_clipfrac_lower: m.pgClipfracLower)
}

/// A typed view of a `const void *` array of `count` elements of type T.
@inline(__always)
func typedInput<T>(_ p: UnsafeRawPointer?, _ count: Int, _ name: String, required: Bool)
    throws(GRPOError) -> UnsafeBufferPointer<T>?
{
    guard let p else {
        if required && count > 0 { throw GRPOError(.null, "\(name) is NULL") }
        return required ? UnsafeBufferPointer(start: nil, count: 0) : nil
    }
    return try inputView(p.assumingMemoryBound(to: T.self), count, name)
}

func auxInput(_ p: UnsafeRawPointer?, _ count: Int, _ dtype: Int32, _ name: String) throws(GRPOError) -> AuxValues? {
    guard let p else { return nil }
    switch dtype {
    case Int32(GRPO_F32.rawValue):
        return .f32(try inputView(p.assumingMemoryBound(to: Float.self), count, name))
    case Int32(GRPO_F64.rawValue):
        return .f64(try inputView(p.assumingMemoryBound(to: Double.self), count, name))
    case Int32(GRPO_BF16.rawValue):
        return .bf16(try inputView(p.assumingMemoryBound(to: BFloat16.self), count, name))
    case Int32(GRPO_F16.rawValue):
        return .f16(try inputView(p.assumingMemoryBound(to: Float16.self), count, name))
    default:
        throw GRPOError(.dtype, "aux_dtype must be a grpo_dtype (0 f32, 1 f64, 2 bf16, 3 f16), got \(dtype)")
    }
}

func policyLossC<S: LossStorage>(
    _ in_: grpo_loss_inputs, _ config: LossConfig, _ storage: S.Type,
    _ grad: UnsafeMutableRawPointer?, _ gradH: UnsafeMutableRawPointer?
) throws(GRPOError) -> PolicyLossMetrics {
    let B = in_.batch, T = in_.length
    guard B >= 1, T >= 0 else {
        throw GRPOError(.shape, "batch must be >= 1 and length >= 0, got batch=\(B), length=\(T)")
    }
    let n = try checkedProduct(B, T, what: "B*T")
    guard in_.advantages_cols == 1 || in_.advantages_cols == T else {
        throw GRPOError(.shape, "advantages_cols must be 1 or T = \(T), got \(in_.advantages_cols)")
    }
    let advCount = in_.advantages_cols == 1 ? B : n
    guard let adv = try auxInput(in_.advantages, advCount, in_.aux_dtype, "advantages") else {
        throw GRPOError(.null, "advantages is NULL")
    }
    var isr: AuxValues? = nil
    if in_.importance_sampling_ratio != nil {
        guard in_.importance_sampling_ratio_cols == 1 || in_.importance_sampling_ratio_cols == T else {
            throw GRPOError(.shape,
                "importance_sampling_ratio_cols must be 1 or T = \(T), got \(in_.importance_sampling_ratio_cols)")
        }
        let c = in_.importance_sampling_ratio_cols == 1 ? B : n
        isr = try auxInput(in_.importance_sampling_ratio, c, in_.aux_dtype, "importance_sampling_ratio")
    }
    guard let logps: UnsafeBufferPointer<S> = try typedInput(in_.logps, n, "logps", required: true) else {
        throw GRPOError(.null, "logps is NULL")
    }
    let inputs = PolicyLossInputs<S>(
        batch: B, length: T, logps: logps,
        oldLogps: try typedInput(in_.old_logps, n, "old_logps", required: false),
        refLogps: try typedInput(in_.ref_logps, n, "ref_logps", required: false),
        samplingLogps: try typedInput(in_.sampling_logps, n, "sampling_logps", required: false),
        entropies: try typedInput(in_.entropies, n, "entropies", required: false),
        advantages: adv, mask: try inputView(in_.mask, n, "mask"), importanceSamplingRatio: isr)
    let g = try optionalOutputView(grad?.assumingMemoryBound(to: S.Real.self), n, "grad")
    let gh = try optionalOutputView(gradH?.assumingMemoryBound(to: S.Real.self), n, "grad_entropies")
    return try PolicyLoss.compute(inputs, config: config, grad: g, gradEntropies: gh)
}

@c @implementation
public func grpo_policy_loss(
    _ inputs: UnsafePointer<grpo_loss_inputs>?, _ cfg: UnsafePointer<grpo_loss_config>?,
    _ grad: UnsafeMutableRawPointer?, _ gradEntropies: UnsafeMutableRawPointer?,
    _ metrics: UnsafeMutablePointer<grpo_loss_metrics>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let in_ = try configValue(inputs, "inputs")
        let config = try lossConfig(cfg)
        guard let metrics else { throw GRPOError(.null, "metrics is NULL") }
        let m: PolicyLossMetrics
        switch in_.dtype {
        case Int32(GRPO_F32.rawValue): m = try policyLossC(in_, config, Float.self, grad, gradEntropies)
        case Int32(GRPO_F64.rawValue): m = try policyLossC(in_, config, Double.self, grad, gradEntropies)
        case Int32(GRPO_BF16.rawValue): m = try policyLossC(in_, config, BFloat16.self, grad, gradEntropies)
        case Int32(GRPO_F16.rawValue): m = try policyLossC(in_, config, Float16.self, grad, gradEntropies)
        default:
            throw GRPOError(.dtype, "dtype must be a grpo_dtype (0 f32, 1 f64, 2 bf16, 3 f16), got \(in_.dtype)")
        }
        metrics.pointee = cLossMetrics(m)
    }
}
