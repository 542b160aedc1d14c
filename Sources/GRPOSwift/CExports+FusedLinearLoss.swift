// C ABI: the fused linear GRPO loss (grpo_fused_linear_loss).
import CGRPOBridge

func fusedLinearLossC<E: LogitElement>(
    _ in_: grpo_fused_loss_inputs, _ element: E.Type, _ loss: LossConfig, _ head: LMHeadConfig,
    _ gradHidden: UnsafeMutablePointer<Float>?, _ gradWeight: UnsafeMutablePointer<Float>?,
    _ gradBias: UnsafeMutablePointer<Float>?, _ logProbs: UnsafeMutablePointer<Float>?,
    _ entropy: UnsafeMutablePointer<Float>?
) throws(GRPOError) -> PolicyLossMetrics {
    let B = in_.batch, T = in_.length, H = in_.hidden_size, V = in_.vocab
    guard B >= 1, T >= 0 else {
        throw GRPOError(.shape, "batch must be >= 1 and length >= 0, got batch=\(B), length=\(T)")
    }
    let n = try checkedProduct(B, T, what: "batch * length")
    let (nh, vh) = try checkLMHeadSizes(n, H, V)
    func view(_ p: UnsafeRawPointer?, _ count: Int, _ name: String) throws(GRPOError) -> UnsafeBufferPointer<E>? {
        guard let p else { return nil }
        return try inputView(p.assumingMemoryBound(to: E.self), count, name)
    }
    guard let hidden = try view(in_.hidden, nh, "hidden") else { throw GRPOError(.null, "hidden is NULL") }
    guard let weight = try view(in_.weight, vh, "weight") else { throw GRPOError(.null, "weight is NULL") }
    guard in_.advantages_cols == 1 || in_.advantages_cols == T else {
        throw GRPOError(.shape, "advantages_cols must be 1 or length = \(T), got \(in_.advantages_cols)")
    }
    guard let adv = try auxInput(in_.advantages, in_.advantages_cols == 1 ? B : n, in_.aux_dtype, "advantages") else {
        throw GRPOError(.null, "advantages is NULL")
    }
    var isr: AuxValues? = nil
    if in_.importance_sampling_ratio != nil {
        let c = in_.importance_sampling_ratio_cols
        guard c == 1 || c == T else {
            throw GRPOError(.shape, "importance_sampling_ratio_cols must be 1 or length = \(T), got \(c)")
        }
        isr = try auxInput(in_.importance_sampling_ratio, c == 1 ? B : n, in_.aux_dtype, "importance_sampling_ratio")
    }
    let x = FusedLinearLossInputs<E>(
        batch: B, length: T, hiddenSize: H, vocab: V, hidden: hidden, weight: weight,
        bias: try view(in_.bias, V, "bias"),
        targets: try inputView(in_.selected_token_ids, n, "selected_token_ids"),
        mask: try inputView(in_.mask, n, "mask"), advantages: adv,
        oldLogps: try optionalInputView(in_.old_logps, n, "old_logps"),
        refLogps: try optionalInputView(in_.ref_logps, n, "ref_logps"),
        refHidden: try view(in_.ref_hidden, nh, "ref_hidden"), refWeight: try view(in_.ref_weight, vh, "ref_weight"),
        refBias: try view(in_.ref_bias, V, "ref_bias"),
        samplingLogps: try optionalInputView(in_.sampling_logps, n, "sampling_logps"),
        importanceSamplingRatio: isr)
    return try FusedLinearLoss.compute(
        x, loss: loss, head: head,
        gradHidden: try optionalOutputView(gradHidden, nh, "grad_hidden"),
        gradWeight: try optionalOutputView(gradWeight, vh, "grad_weight"),
        gradBias: try optionalOutputView(gradBias, V, "grad_bias"),
        logProbs: try optionalOutputView(logProbs, n, "log_probs"),
        entropy: try optionalOutputView(entropy, n, "entropy"),
        scratchBudget: try budget(in_.scratch_budget))
}

func budget(_ b: Int) throws(GRPOError) -> Int? {
    guard b >= 0 else { throw GRPOError(.value, "scratch_budget must be >= 0 (0 = default), got \(b)") }
    return b == 0 ? nil : b
}

@c @implementation
public func grpo_fused_linear_loss(
    _ inputs: UnsafePointer<grpo_fused_loss_inputs>?, _ lossCfg: UnsafePointer<grpo_loss_config>?,
    _ headCfg: UnsafePointer<grpo_lm_head_config>?, _ gradHidden: UnsafeMutablePointer<Float>?,
    _ gradWeight: UnsafeMutablePointer<Float>?, _ gradBias: UnsafeMutablePointer<Float>?,
    _ logProbs: UnsafeMutablePointer<Float>?, _ entropy: UnsafeMutablePointer<Float>?,
    _ metrics: UnsafeMutablePointer<grpo_loss_metrics>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let in_ = try configValue(inputs, "inputs")
        let loss = try lossConfig(lossCfg)
        let head = try lmHeadConfig(headCfg)
        guard let metrics else { throw GRPOError(.null, "metrics is NULL") }
        let m: PolicyLossMetrics
        switch try logitDType(in_.dtype, "dtype") {
        case .f32: m = try fusedLinearLossC(in_, Float.self, loss, head, gradHidden, gradWeight, gradBias, logProbs, entropy)
        case .bf16: m = try fusedLinearLossC(in_, BFloat16.self, loss, head, gradHidden, gradWeight, gradBias, logProbs, entropy)
        case let dt:
            throw GRPOError(.dtype, "the fused linear loss takes float32 or bfloat16 hidden/weight, got \(dt.name)")
        }
        metrics.pointee = cLossMetrics(m)
    }
}

@c @implementation
public func grpo_fused_linear_loss_scratch_bytes(
    _ batch: Int, _ length: Int, _ hiddenSize: Int, _ vocab: Int, _ headCfg: UnsafePointer<grpo_lm_head_config>?,
    _ dtype: Int32, _ refFromHidden: Int32, _ quantileBelowOne: Int32, _ scratchBudget: Int,
    _ bytes: UnsafeMutablePointer<Int>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let head = try lmHeadConfig(headCfg)
        guard let bytes else { throw GRPOError(.null, "bytes is NULL") }
        let dt = try logitDType(dtype, "dtype")
        guard dt == .f32 || dt == .bf16 else {
            throw GRPOError(.dtype, "the fused linear loss takes float32 or bfloat16 inputs, got \(dt.name)")
        }
        for (name, v) in [("ref_from_hidden", refFromHidden), ("top_entropy_quantile_below_one", quantileBelowOne)] {
            guard v == 0 || v == 1 else { throw GRPOError(.value, "\(name) must be 0 or 1, got \(v)") }
        }
        guard batch >= 1, length >= 0 else {
            throw GRPOError(.shape, "batch must be >= 1 and length >= 0, got batch=\(batch), length=\(length)")
        }
        _ = try checkLMHeadSizes(try checkedProduct(batch, length, what: "batch * length"), hiddenSize, vocab)
        var cfg = LossConfig()
        if quantileBelowOne == 1 { cfg.topEntropyQuantile = 0.5 }
        bytes.pointee = try FusedLinearLoss.scratchBytes(
            batch: batch, length: length, hiddenSize: hiddenSize, vocab: vocab, head: head, bfloat16: dt == .bf16,
            refFromHidden: refFromHidden == 1, lossConfig: cfg, scratchBudget: try budget(scratchBudget))
    }
}
