// C ABI: advantage estimators over explicit groups, DAPO zero-spread flags.
import CGRPOBridge

func estimatorConfig(_ cfg: UnsafePointer<grpo_estimator_config>?) throws(GRPOError)
    -> (EstimatorConfig, numGenerations: Int)
{
    let c = try configValue(cfg, "config")
    guard let est = AdvantageEstimator(rawValue: c.estimator) else {
        throw GRPOError(.value, "estimator must be 0 (grpo) to 6 (reinforce_pp_baseline), got \(c.estimator)")
    }
    guard let singleton = SingletonPolicy(rawValue: c.singleton) else {
        throw GRPOError(.value, "singleton must be 0 (zero), 1 (raw) or 2 (error), got \(c.singleton)")
    }
    guard let scale = ScaleRewards(rawValue: c.scale_rewards) else {
        throw GRPOError(.value, "scale_rewards must be 0 (group), 1 (batch) or 2 (none), got \(c.scale_rewards)")
    }
    guard c.normalize == 0 || c.normalize == 1 else {
        throw GRPOError(.value, "normalize must be 0 or 1, got \(c.normalize)")
    }
    guard let masked = MaskedReturns(rawValue: c.masked_returns) else {
        throw GRPOError(.value, "masked_returns must be 0 (carry) or 1 (reset), got \(c.masked_returns)")
    }
    guard let alpha = GPGAlpha(rawValue: c.gpg_alpha_mode) else {
        throw GRPOError(.value, "gpg_alpha_mode must be 0 (informative), 1 (nonzero) or 2 (fixed), got \(c.gpg_alpha_mode)")
    }
    let config = EstimatorConfig(
        estimator: est, singleton: singleton, scaleRewards: scale, normalize: c.normalize == 1,
        epsilon: c.epsilon, gamma: c.gamma, maskedReturns: masked, gpgAlphaMode: alpha, gpgAlpha: c.gpg_alpha,
        gpgFNorm: c.gpg_f_norm)
    return (config, c.num_generations)
}

/// RowGroups from a nullable id pointer or the consecutive group size.
func rowGroupsC(_ ids: UnsafePointer<Int64>?, _ n: Int, _ numGenerations: Int) throws(GRPOError)
    -> (RowGroups, UnsafeBufferPointer<Int64>?)
{
    guard n > 0 else { throw GRPOError(.shape, "n must be >= 1, got \(n)") }
    if let view = try optionalInputView(ids, n, "group_ids") {
        return (try RowGroups(ids: view, rows: n), view)
    }
    return (try RowGroups(rows: n, numGenerations: numGenerations), nil)
}

func estimatorAdvantagesC<T: BinaryFloatingPoint>(
    _ rewards: UnsafePointer<T>?, _ n: Int, _ ids: UnsafePointer<Int64>?, _ lengths: UnsafePointer<T>?,
    _ cfg: UnsafePointer<grpo_estimator_config>?, _ adv: UnsafeMutablePointer<T>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let (config, g) = try estimatorConfig(cfg)
        let (groups, idView) = try rowGroupsC(ids, n, g)
        try Estimators.rowAdvantages(
            rewards: inputView(rewards, n, "rewards"), groups: groups, ids: idView,
            lengths: optionalInputView(lengths, n, "lengths"), config: config,
            advantages: outputView(adv, n, "advantages"))
    }
}

@c @implementation
public func grpo_estimator_advantages_f64(
    _ rewards: UnsafePointer<Double>?, _ n: Int, _ ids: UnsafePointer<Int64>?,
    _ lengths: UnsafePointer<Double>?, _ cfg: UnsafePointer<grpo_estimator_config>?,
    _ adv: UnsafeMutablePointer<Double>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    estimatorAdvantagesC(rewards, n, ids, lengths, cfg, adv, err, errlen)
}

@c @implementation
public func grpo_estimator_advantages_f32(
    _ rewards: UnsafePointer<Float>?, _ n: Int, _ ids: UnsafePointer<Int64>?,
    _ lengths: UnsafePointer<Float>?, _ cfg: UnsafePointer<grpo_estimator_config>?,
    _ adv: UnsafeMutablePointer<Float>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    estimatorAdvantagesC(rewards, n, ids, lengths, cfg, adv, err, errlen)
}

func tokenAdvantagesC<T: BinaryFloatingPoint>(
    _ rewards: UnsafePointer<T>?, _ n: Int, _ t: Int, _ rewardCols: Int, _ mask: UnsafePointer<UInt8>?,
    _ ids: UnsafePointer<Int64>?, _ cfg: UnsafePointer<grpo_estimator_config>?,
    _ adv: UnsafeMutablePointer<T>?, _ returns: UnsafeMutablePointer<T>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let (config, g) = try estimatorConfig(cfg)
        guard n > 0, t > 0 else { throw GRPOError(.shape, "n and t must be >= 1, got n=\(n), t=\(t)") }
        guard rewardCols == 1 || rewardCols == t else {
            throw GRPOError(.shape, "reward_cols must be 1 or t (\(t)), got \(rewardCols)")
        }
        let total = try checkedProduct(n, t, what: "response_mask")
        let rewardCount = try checkedProduct(n, rewardCols, what: "rewards")
        var groups: RowGroups? = nil
        var idView: UnsafeBufferPointer<Int64>? = nil
        if config.estimator == .reinforcePPBaseline {
            (groups, idView) = try rowGroupsC(ids, n, g)
        }
        try Estimators.tokenAdvantages(
            rewards: inputView(rewards, rewardCount, "rewards"), rewardCols: rewardCols, rows: n, cols: t,
            mask: inputView(mask, total, "response_mask"), groups: groups, ids: idView, config: config,
            advantages: outputView(adv, total, "advantages"),
            returns: returns == nil ? nil : outputView(returns, total, "returns"))
    }
}

@c @implementation
public func grpo_token_advantages_f64(
    _ rewards: UnsafePointer<Double>?, _ n: Int, _ t: Int, _ rewardCols: Int,
    _ mask: UnsafePointer<UInt8>?, _ ids: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_estimator_config>?, _ adv: UnsafeMutablePointer<Double>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    tokenAdvantagesC(rewards, n, t, rewardCols, mask, ids, cfg, adv, nil, err, errlen)
}

@c @implementation
public func grpo_token_advantages_f32(
    _ rewards: UnsafePointer<Float>?, _ n: Int, _ t: Int, _ rewardCols: Int,
    _ mask: UnsafePointer<UInt8>?, _ ids: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_estimator_config>?, _ adv: UnsafeMutablePointer<Float>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    tokenAdvantagesC(rewards, n, t, rewardCols, mask, ids, cfg, adv, nil, err, errlen)
}

@c @implementation
public func grpo_token_advantages_returns_f64(
    _ rewards: UnsafePointer<Double>?, _ n: Int, _ t: Int, _ rewardCols: Int,
    _ mask: UnsafePointer<UInt8>?, _ ids: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_estimator_config>?, _ adv: UnsafeMutablePointer<Double>?,
    _ returns: UnsafeMutablePointer<Double>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    tokenAdvantagesC(rewards, n, t, rewardCols, mask, ids, cfg, adv, returns, err, errlen)
}

@c @implementation
public func grpo_token_advantages_returns_f32(
    _ rewards: UnsafePointer<Float>?, _ n: Int, _ t: Int, _ rewardCols: Int,
    _ mask: UnsafePointer<UInt8>?, _ ids: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_estimator_config>?, _ adv: UnsafeMutablePointer<Float>?,
    _ returns: UnsafeMutablePointer<Float>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    tokenAdvantagesC(rewards, n, t, rewardCols, mask, ids, cfg, adv, returns, err, errlen)
}

func zeroSpreadC<T: BinaryFloatingPoint>(
    _ rewards: UnsafePointer<T>?, _ n: Int, _ ids: UnsafePointer<Int64>?, _ g: Int, _ tolerance: Double,
    _ out: UnsafeMutablePointer<UInt8>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let (groups, _) = try rowGroupsC(ids, n, g)
        try Estimators.zeroSpread(rewards: inputView(rewards, n, "rewards"), groups: groups,
                                  tolerance: tolerance, out: outputView(out, n, "zero_spread"))
    }
}

@c @implementation
public func grpo_zero_spread_groups_f64(
    _ rewards: UnsafePointer<Double>?, _ n: Int, _ ids: UnsafePointer<Int64>?, _ g: Int,
    _ tolerance: Double, _ out: UnsafeMutablePointer<UInt8>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    zeroSpreadC(rewards, n, ids, g, tolerance, out, err, errlen)
}

@c @implementation
public func grpo_zero_spread_groups_f32(
    _ rewards: UnsafePointer<Float>?, _ n: Int, _ ids: UnsafePointer<Int64>?, _ g: Int,
    _ tolerance: Double, _ out: UnsafeMutablePointer<UInt8>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    zeroSpreadC(rewards, n, ids, g, tolerance, out, err, errlen)
}
