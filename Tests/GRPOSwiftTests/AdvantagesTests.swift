import Testing
@testable import GRPOSwift
import CGRPOBridge

/// Runs the f64 kernel through the Swift array API.
func advantages(_ rewards: [Double], funcs: Int = 1, g: Int, scale: ScaleRewards = .group,
                agg: RewardAggregation = .sumThenNormalize, weights: [Double]? = nil)
    throws(GRPOError) -> (a: [Double], mean: [Double], std: [Double], zero: [UInt8])
{
    let cfg = AdvantagesConfig(numGenerations: g, scaleRewards: scale, aggregation: agg)
    let r = try Advantages.compute(rewards: rewards, funcs: funcs, weights: weights, config: cfg)
    return (r.advantages, r.mean, r.std, r.isStdZero.map { $0 ? 1 : 0 })
}

@Suite struct AdvantagesTests {
    @Test func closedFormGroup() throws {
        // Group (1, 2, 3, 4): mean 2.5, Bessel std sqrt(5/3).
        let r = try advantages([1, 2, 3, 4, 10, 10, 10, 10], g: 4)
        let sd = (5.0 / 3.0).squareRoot()
        for (i, x) in [1.0, 2, 3, 4].enumerated() {
            #expect(abs(r.a[i] - (x - 2.5) / (sd + 1e-4)) < 1e-15)
        }
        // Identical rewards: exactly zero, std exactly zero, flagged.
        #expect(r.a[4...].allSatisfy { $0 == 0 })
        #expect(r.std[4] == 0 && r.zero[4] == 1 && r.zero[0] == 0)
    }

    @Test(arguments: [0.7, 0.1, 0.35, 1e-300, 3.3e7])
    func identicalRewardsGiveExactZero(value: Double) throws {
        let r = try advantages([Double](repeating: value, count: 14), g: 7)
        #expect(r.a.allSatisfy { $0 == 0 })
        #expect(r.mean.allSatisfy { $0 == value })
    }

    @Test func unscorableRowGetsZeroAndIsExcluded() throws {
        let r = try advantages([1, .nan, 3, 5], g: 4, scale: .none)
        #expect(r.a[1] == 0)
        #expect(r.mean[0] == 3)
        #expect(r.a[0] == -2 && r.a[3] == 2)
    }

    @Test func batchScaleUsesBatchStd() throws {
        let rewards: [Double] = [0, 1, 10, 30]
        let r = try advantages(rewards, g: 2, scale: .batch)
        let m = rewards.reduce(0, +) / 4
        let sd = (rewards.map { ($0 - m) * ($0 - m) }.reduce(0, +) / 3).squareRoot()
        #expect(abs(r.a[0] - (0 - 0.5) / (sd + 1e-4)) < 1e-15)
        #expect(abs(r.a[3] - (30 - 20) / (sd + 1e-4)) < 1e-14)
    }

    @Test func weightsAndNaNSum() throws {
        // Two functions, weights (2, 0.5); a NaN entry is skipped in the sum.
        let r = try advantages([1, 2, .nan, 4, 3, 0, 1, 1], funcs: 2, g: 2, scale: .none, weights: [2, 0.5])
        // rows: 2+1=3, 2, 6, 2.5 -> groups (3,2), (6,2.5)
        #expect(r.a == [0.5, -0.5, 1.75, -1.75])
    }

    @Test func normalizeThenSumIsBatchZScore() throws {
        let r = try advantages([1, 5, 2, 7, 3, 6, 9, 1], funcs: 2, g: 2, agg: .normalizeThenSum)
        let m = r.a.reduce(0, +) / 4
        #expect(abs(m) < 1e-12)
    }

    @Test func errors() {
        #expect(throws: GRPOError.self) { try advantages([1, 2, 3], g: 2) }
        #expect(throws: GRPOError.self) { try advantages([1, 2], g: 1) }
        #expect(throws: GRPOError.self) { try advantages([], g: 2) }
        #expect(throws: GRPOError.self) { try advantages([1, 2, 3, 4], funcs: 2, g: 2, weights: [1]) }
    }

    @Test func threadCountDoesNotChangeBits() throws {
        var rng = SplitMix(seed: 7)
        let rewards = (0..<(1 << 16)).map { _ in rng.nextDouble() }
        try Parallel.setNumThreads(1)
        let one = try advantages(rewards, g: 16, scale: .batch)
        try Parallel.setNumThreads(4)
        let four = try advantages(rewards, g: 16, scale: .batch)
        try Parallel.setNumThreads(Parallel.defaultThreads())
        #expect(one.a == four.a)
    }

    @Test func cABIReportsErrors() {
        var cfg = grpo_advantages_config(num_generations: 3, scale_rewards: 0, aggregation: 0)
        var err = [CChar](repeating: 0, count: 128)
        let r: [Double] = [1, 2, 3, 4]
        var out = [Double](repeating: 0, count: 4), m = out, s = out
        var z = [UInt8](repeating: 0, count: 4)
        let st = grpo_group_advantages_f64(r, 4, 1, nil, &cfg, &out, &m, &s, &z, &err, 128)
        #expect(st == GRPO_ERR_SHAPE)
        let msg = err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        #expect(msg.contains("multiple of num_generations"))
        cfg.scale_rewards = 7
        #expect(grpo_group_advantages_f64(r, 4, 1, nil, &cfg, &out, &m, &s, &z, &err, 128) == GRPO_ERR_VALUE)
        #expect(grpo_group_advantages_f64(nil, 4, 1, nil, &cfg, &out, &m, &s, &z, nil, 0) != GRPO_OK)
        // n * num_funcs overflowing is refused before any buffer is touched or allocated.
        cfg.scale_rewards = 0
        cfg.num_generations = 2
        #expect(grpo_group_advantages_f64(r, Int.max / 2, 4, nil, &cfg, &out, &m, &s, &z, &err, 128)
                == GRPO_ERR_OVERFLOW)
        #expect(grpo_group_advantages_f64(r, -4, 1, nil, &cfg, &out, &m, &s, &z, &err, 128) == GRPO_ERR_SHAPE)
    }
}

/// Deterministic test RNG (SplitMix64).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    mutating func nextDouble() -> Double { Double(next() >> 11) * 0x1p-53 }
    /// Uniform in [lo, hi).
    mutating func uniform(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * nextDouble() }
}
