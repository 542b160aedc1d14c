// Group-relative advantages with the semantics of TRL 1.16's GRPOTrainer.
//
// Maths (G = num_generations, groups are G consecutive rows, NaN = missing reward):
//   sum_then_normalize:  r_i = nansum_f(w_f R_if) (NaN when every R_if is NaN)
//                        mu_g = nanmean_g(r), sigma = nanstd per group ("group"/"none") or
//                        over the batch ("batch"), A_i = (r_i - mu_g) / (sigma + 1e-4)
//                        (no division for "none").
//   normalize_then_sum:  z_if = (R_if - nanmean_g(R_f)) / (nanstd_g(R_f) + 1e-4),
//                        r_i = nansum_f(w_f z_if), A = (r - nanmean(r)) / (nanstd(r) + 1e-4).
//   Finally NaN -> 0. nanstd is two-pass and Bessel-corrected over valid entries, NaN when
//   fewer than 2 are valid. is_std_zero_i = |sigma_i| <= 1e-8 (torch.isclose(sigma, 0)).
//
// Accuracy: all arithmetic is in Double whatever the element type. The mean is clamped to
// the [min, max] of the values it averages, so a group of identical rewards (even 0.7, which
// binary floats cannot hold) has deviations of exactly 0 and advantages of exactly 0.

/// How the centred reward is scaled (TRL's `scale_rewards`).
public enum ScaleRewards: Int32, Sendable, CaseIterable {
    case group = 0, batch = 1, none = 2
}

/// How several reward functions are combined (TRL's `multi_objective_aggregation`).
public enum RewardAggregation: Int32, Sendable, CaseIterable {
    case sumThenNormalize = 0, normalizeThenSum = 1
}

public struct AdvantagesConfig: Sendable {
    public var numGenerations: Int
    public var scaleRewards: ScaleRewards
    public var aggregation: RewardAggregation
    public init(numGenerations: Int, scaleRewards: ScaleRewards = .group,
                aggregation: RewardAggregation = .sumThenNormalize) {
        self.numGenerations = numGenerations
        self.scaleRewards = scaleRewards
        self.aggregation = aggregation
    }
}

/// The additive constant TRL puts under the std.
public let advantageStdEpsilon = 1e-4

/// Mean and Bessel-corrected std of the non-NaN values among `count` values read by `value`,
/// two-pass, in index order. mean is NaN when no value is valid, std when fewer than 2.
@inlinable
func nanMeanStd(count: Int, _ value: (Int) -> Double) -> (mean: Double, std: Double) {
    var sum = 0.0, n = 0
    var lo = Double.infinity, hi = -Double.infinity
    for j in 0..<count {
        let x = value(j)
        if x.isNaN { continue }
        sum += x
        n += 1
        lo = Swift.min(lo, x)
        hi = Swift.max(hi, x)
    }
    if n == 0 { return (.nan, .nan) }
    // The true mean lies in [lo, hi]; clamping makes identical values give mean == value.
    var mean = sum / Double(n)
    if mean.isFinite { mean = Swift.min(Swift.max(mean, lo), hi) }
    if n < 2 { return (mean, .nan) }
    var ss = 0.0
    for j in 0..<count {
        let x = value(j)
        if x.isNaN { continue }
        let d = x - mean
        ss += d * d
    }
    return (mean, (ss / Double(n - 1)).squareRoot())
}

/// torch.isclose(x, 0) with its default tolerances (atol 1e-8, rtol 1e-5): |x| <= 1e-8.
@inlinable
func isCloseToZero(_ x: Double) -> Bool { Swift.abs(x) <= 1e-8 }

public enum Advantages {
    /// Rows per parallel chunk (a multiple of every group size is not needed: groups are
    /// assigned whole to chunks by `groupsPerChunk`).
    static let rowsPerChunk = 1 << 14

    /// Group advantages. `rewards` is (rows, funcs) row-major; `weights` is (funcs) or nil.
    /// Outputs are (rows). Throws for invalid sizes or options; never traps.
    public static func compute<T: BinaryFloatingPoint>(
        rewards: UnsafeBufferPointer<T>, rows: Int, funcs: Int,
        weights: UnsafeBufferPointer<T>?, config: AdvantagesConfig,
        advantages: UnsafeMutableBufferPointer<T>, mean: UnsafeMutableBufferPointer<T>,
        std: UnsafeMutableBufferPointer<T>, isStdZero: UnsafeMutableBufferPointer<UInt8>
    ) throws(GRPOError) {
        let g = config.numGenerations
        guard g >= 2 else {
            throw GRPOError(.value, "num_generations must be >= 2, got \(g)")
        }
        guard rows > 0 else { throw GRPOError(.shape, "rewards must have at least one row, got 0") }
        guard funcs > 0 else {
            throw GRPOError(.shape, "rewards must have at least one reward function (column), got 0")
        }
        guard rows % g == 0 else {
            throw GRPOError(.shape,
                "the number of rows (\(rows)) must be a multiple of num_generations (\(g))")
        }
        let total = try checkedProduct(rows, funcs, what: "rewards")
        guard rewards.count >= total else {
            throw GRPOError(.shape, "rewards buffer holds \(rewards.count) elements, expected \(total)")
        }
        if let weights, weights.count < funcs {
            throw GRPOError(.shape, "reward_weights holds \(weights.count) elements, expected \(funcs)")
        }
        guard advantages.count >= rows, mean.count >= rows, std.count >= rows,
              isStdZero.count >= rows else {
            throw GRPOError(.shape, "output buffers must hold \(rows) elements")
        }

        let w: [Double] = (0..<funcs).map { k in weights.map { Double($0[k]) } ?? 1.0 }
        let groups = rows / g
        let groupsPerChunk = Swift.max(1, rowsPerChunk / g)

        // Common case (sum_then_normalize with group statistics): one fused pass per group,
        // the summed rewards live in a per-chunk scratch of G values.
        if config.aggregation == .sumThenNormalize && config.scaleRewards != .batch {
            let divide = config.scaleRewards == .group
            try Parallel.forEachChunk(count: groups, chunkSize: groupsPerChunk) { _, range in
                withUnsafeTemporaryAllocation(of: Double.self, capacity: g) { r in
                    for grp in range {
                        let base = grp * g
                        for j in 0..<g {
                            r[j] = weightedNanSum(rewards, row: base + j, funcs: funcs, w) { Double($0) }
                        }
                        let (mu, sigma) = nanMeanStd(count: g) { r[$0] }
                        writeGroup(base: base, g: g, r: UnsafeBufferPointer(r), mu: mu, sigma: sigma,
                                   divide: divide, advantages, mean, std, isStdZero)
                    }
                }
            }
            return
        }

        // Otherwise a batch statistic is needed: the summed reward of every row first.
        var summed = [Double](repeating: .nan, count: rows)
        try summed.withUnsafeMutableBufferPointer { (r) throws(GRPOError) in
            switch config.aggregation {
            case .sumThenNormalize:
                try Parallel.forEachChunk(count: rows, chunkSize: rowsPerChunk) { _, range in
                    for i in range {
                        r[i] = weightedNanSum(rewards, row: i, funcs: funcs, w) { Double($0) }
                    }
                }
            case .normalizeThenSum:
                // Per function, the group z-score; then the weighted nansum over functions.
                try Parallel.forEachChunk(count: groups, chunkSize: groupsPerChunk) { _, range in
                    var z = [Double](repeating: .nan, count: g * funcs)
                    for grp in range {
                        let base = grp * g
                        for k in 0..<funcs {
                            let (mu, sd) = nanMeanStd(count: g) { j in Double(rewards[(base + j) * funcs + k]) }
                            for j in 0..<g {
                                z[j * funcs + k] = (Double(rewards[(base + j) * funcs + k]) - mu) / (sd + advantageStdEpsilon)
                            }
                        }
                        for j in 0..<g {
                            let i = base + j
                            var anyValid = false
                            for k in 0..<funcs where !Double(rewards[i * funcs + k]).isNaN { anyValid = true }
                            if !anyValid { r[i] = .nan; continue }
                            var s = 0.0
                            for k in 0..<funcs {
                                let v = w[k] * z[j * funcs + k]
                                if !v.isNaN { s += v }
                            }
                            r[i] = s
                        }
                    }
                }
            }
        }

        try summed.withUnsafeBufferPointer { (r) throws(GRPOError) in
            let (batchMean, batchStd) = try batchMeanStd(r)
            let batchMeanToo = config.aggregation == .normalizeThenSum
            try Parallel.forEachChunk(count: groups, chunkSize: groupsPerChunk) { _, range in
                for grp in range {
                    let base = grp * g
                    let groupRows = UnsafeBufferPointer(rebasing: r[base..<(base + g)])
                    let mu = batchMeanToo ? batchMean : nanMeanStd(count: g) { groupRows[$0] }.mean
                    writeGroup(base: base, g: g, r: groupRows, mu: mu, sigma: batchStd, divide: true,
                               advantages, mean, std, isStdZero)
                }
            }
        }
    }

    /// Writes one group's outputs from its summed rewards `r` (G values) and statistics.
    @inline(__always)
    static func writeGroup<T: BinaryFloatingPoint>(
        base: Int, g: Int, r: UnsafeBufferPointer<Double>, mu: Double, sigma: Double, divide: Bool,
        _ advantages: UnsafeMutableBufferPointer<T>, _ mean: UnsafeMutableBufferPointer<T>,
        _ std: UnsafeMutableBufferPointer<T>, _ isStdZero: UnsafeMutableBufferPointer<UInt8>
    ) {
        let zero: UInt8 = isCloseToZero(sigma) ? 1 : 0
        for j in 0..<g {
            let i = base + j
            var a = r[j] - mu
            // (x / s) and (x * (1/s)) differ in the last bit: divide, as TRL does.
            if divide { a = a / (sigma + advantageStdEpsilon) }
            advantages[i] = a.isNaN ? 0 : T(a)
            mean[i] = T(mu)
            std[i] = T(sigma)
            isStdZero[i] = zero
        }
    }

    /// nansum_f(w_f * R_if), or NaN when every R_if is NaN (the row is unscorable).
    @inline(__always)
    static func weightedNanSum<T>(
        _ rewards: UnsafeBufferPointer<T>, row i: Int, funcs: Int, _ w: [Double],
        _ toDouble: (T) -> Double
    ) -> Double {
        var s = 0.0
        var anyValid = false
        for k in 0..<funcs {
            let x = toDouble(rewards[i * funcs + k])
            if x.isNaN { continue }
            anyValid = true
            let v = w[k] * x
            if !v.isNaN { s += v }
        }
        return anyValid ? s : .nan
    }

    /// Two-pass nanmean/nanstd over the whole batch with per-chunk partials combined in
    /// chunk order (deterministic for any thread count).
    static func batchMeanStd(_ r: UnsafeBufferPointer<Double>) throws(GRPOError) -> (mean: Double, std: Double) {
        let n = r.count
        let chunks = (n + rowsPerChunk - 1) / rowsPerChunk
        var sums = [Double](repeating: 0, count: chunks)
        var counts = [Int](repeating: 0, count: chunks)
        var los = [Double](repeating: .infinity, count: chunks)
        var his = [Double](repeating: -.infinity, count: chunks)
        try sums.withUnsafeMutableBufferPointer { (sums) throws(GRPOError) in
            try counts.withUnsafeMutableBufferPointer { (counts) throws(GRPOError) in
                try los.withUnsafeMutableBufferPointer { (los) throws(GRPOError) in
                    try his.withUnsafeMutableBufferPointer { (his) throws(GRPOError) in
                        try Parallel.forEachChunk(count: n, chunkSize: rowsPerChunk) { c, range in
                            var s = 0.0, k = 0, lo = Double.infinity, hi = -Double.infinity
                            for i in range where !r[i].isNaN {
                                s += r[i]; k += 1
                                lo = Swift.min(lo, r[i]); hi = Swift.max(hi, r[i])
                            }
                            sums[c] = s; counts[c] = k; los[c] = lo; his[c] = hi
                        }
                    }
                }
            }
        }
        let count = counts.reduce(0, +)
        if count == 0 { return (.nan, .nan) }
        var mean = sums.reduce(0, +) / Double(count)
        if mean.isFinite { mean = Swift.min(Swift.max(mean, los.min() ?? mean), his.max() ?? mean) }
        if count < 2 { return (mean, .nan) }
        var partial = [Double](repeating: 0, count: chunks)
        try partial.withUnsafeMutableBufferPointer { (partial) throws(GRPOError) in
            try Parallel.forEachChunk(count: n, chunkSize: rowsPerChunk) { c, range in
                var ss = 0.0
                for i in range where !r[i].isNaN { let d = r[i] - mean; ss += d * d }
                partial[c] = ss
            }
        }
        return (mean, (partial.reduce(0, +) / Double(count - 1)).squareRoot())
    }
}

/// Advantages and the statistics they were normalised with, one entry per row.
public struct AdvantagesResult<T: BinaryFloatingPoint>: Sendable where T: Sendable {
    public var advantages: [T]
    public var mean: [T]
    public var std: [T]
    public var isStdZero: [Bool]
}

extension Advantages {
    /// Array convenience for Swift callers: `rewards` is (rows, funcs) row-major.
    public static func compute<T: BinaryFloatingPoint & Sendable>(
        rewards: [T], funcs: Int = 1, weights: [T]? = nil, config: AdvantagesConfig
    ) throws(GRPOError) -> AdvantagesResult<T> {
        guard funcs > 0 else { throw GRPOError(.shape, "funcs must be >= 1, got \(funcs)") }
        guard rewards.count % funcs == 0 else {
            throw GRPOError(.shape, "rewards.count (\(rewards.count)) is not a multiple of funcs (\(funcs))")
        }
        let rows = rewards.count / funcs
        var a = [T](repeating: 0, count: rows), m = a, s = a
        var z = [UInt8](repeating: 0, count: rows)
        let outcome: Result<Void, GRPOError> = rewards.withUnsafeBufferPointer { r in
            a.withUnsafeMutableBufferPointer { a in
                m.withUnsafeMutableBufferPointer { m in
                    s.withUnsafeMutableBufferPointer { s in
                        z.withUnsafeMutableBufferPointer { z in
                            let w = weights ?? []
                            return w.withUnsafeBufferPointer { w in
                                Result { () throws(GRPOError) in
                                    try compute(rewards: r, rows: rows, funcs: funcs,
                                                weights: weights == nil ? nil : w, config: config,
                                                advantages: a, mean: m, std: s, isStdZero: z)
                                }
                            }
                        }
                    }
                }
            }
        }
        try outcome.get()
        return AdvantagesResult(advantages: a, mean: m, std: s, isStdZero: z.map { $0 != 0 })
    }
}
