// C ABI: group advantages.
import CGRPOBridge

func advantagesConfig(_ cfg: UnsafePointer<grpo_advantages_config>?) throws(GRPOError) -> AdvantagesConfig {
    let c = try configValue(cfg, "config")
    guard let scale = ScaleRewards(rawValue: c.scale_rewards) else {
        throw GRPOError(.value, "scale_rewards must be 0 (group), 1 (batch) or 2 (none), got \(c.scale_rewards)")
    }
    guard let agg = RewardAggregation(rawValue: c.aggregation) else {
        throw GRPOError(.value,
            "multi_objective_aggregation must be 0 (sum_then_normalize) or 1 (normalize_then_sum), got \(c.aggregation)")
    }
    return AdvantagesConfig(numGenerations: c.num_generations, scaleRewards: scale, aggregation: agg)
}

func groupAdvantagesC<T: BinaryFloatingPoint>(
    _ rewards: UnsafePointer<T>?, _ n: Int, _ numFuncs: Int, _ weights: UnsafePointer<T>?,
    _ cfg: UnsafePointer<grpo_advantages_config>?,
    _ adv: UnsafeMutablePointer<T>?, _ mean: UnsafeMutablePointer<T>?, _ std: UnsafeMutablePointer<T>?,
    _ zero: UnsafeMutablePointer<UInt8>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let config = try advantagesConfig(cfg)
        guard n >= 0, numFuncs >= 0 else {
            throw GRPOError(.shape, "sizes must be non-negative, got n=\(n), num_funcs=\(numFuncs)")
        }
        let total = try checkedProduct(n, numFuncs, what: "rewards")
        try Advantages.compute(
            rewards: inputView(rewards, total, "rewards"), rows: n, funcs: numFuncs,
            weights: optionalInputView(weights, numFuncs, "reward_weights"), config: config,
            advantages: outputView(adv, n, "advantages"), mean: outputView(mean, n, "mean"),
            std: outputView(std, n, "std"), isStdZero: outputView(zero, n, "is_std_zero"))
    }
}

@c @implementation
public func grpo_group_advantages_f64(
    _ rewards: UnsafePointer<Double>?, _ n: Int, _ numFuncs: Int, _ weights: UnsafePointer<Double>?,
    _ cfg: UnsafePointer<grpo_advantages_config>?,
    _ adv: UnsafeMutablePointer<Double>?, _ mean: UnsafeMutablePointer<Double>?,
    _ std: UnsafeMutablePointer<Double>?, _ zero: UnsafeMutablePointer<UInt8>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    groupAdvantagesC(rewards, n, numFuncs, weights, cfg, adv, mean, std, zero, err, errlen)
}

@c @implementation
public func grpo_group_advantages_f32(
    _ rewards: UnsafePointer<Float>?, _ n: Int, _ numFuncs: Int, _ weights: UnsafePointer<Float>?,
    _ cfg: UnsafePointer<grpo_advantages_config>?,
    _ adv: UnsafeMutablePointer<Float>?, _ mean: UnsafeMutablePointer<Float>?,
    _ std: UnsafeMutablePointer<Float>?, _ zero: UnsafeMutablePointer<UInt8>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    groupAdvantagesC(rewards, n, numFuncs, weights, cfg, adv, mean, std, zero, err, errlen)
}
