// Advantage estimators of the literature over explicit groups (RowGroups): GRPO, Dr.GRPO,
// RLOO, OPO, GPG, GRPO pass@k (one advantage per row), REINFORCE++ and REINFORCE++-baseline
// (one advantage per token). Everything is computed in Double whatever the element type.
//
// Notation: group g with rows i; r_i the reward (NaN = unscorable: advantage 0, excluded from
// every statistic); k_g the number of scorable rows of g; mu_g their mean (clamped to their
// [min, max] so identical rewards give exactly 0); sd_g their Bessel-corrected std.
//
//   grpo     A_i = (r_i - mu_g) / (s + eps), s = sd_g ("group"), the std of every scorable
//            reward of the batch ("batch"), or no division ("none" = Dr.GRPO).   [TRL 1.16]
//   rloo     A_i = r_i - (sum_{j != i} r_j) / (k_g - 1) = (r_i - mu_g) k_g / (k_g - 1); optional
//            batch z-score over the scorable advantages with eps (TRL normalize_advantages).
//   opo      A_i = r_i - b_g, b_g = sum_j L_j r_j / sum_j L_j (L = response length, >= 0);
//            b_g is clamped to the group's [min, max]; sum L = 0 gives A = 0.        [verl]
//   gpg      A_i = alpha (r_i - mu_g) / f_norm; alpha = N / M where M counts the scorable rows
//            of groups with non-zero spread (the GPG paper, "informative"), or the scorable rows
//            with r != 0 (verl, "nonzero"), or a fixed value. M is at least 1.
//   passk    within each group only the first row holding the maximum gets
//            A = (r_max - r_second) [/ (sd_g + eps)]; every other row 0.                [verl]
//   reinforce_pp           returns R_t = r_t + gamma R_{t+1} over kept tokens, scanning back from
//            each row's last kept token; a masked-out position inside a row (a tool observation
//            of a multi-turn rollout) passes the running return through unchanged (.carry,
//            verl 0.9.1) or restarts it at 0 (.reset, verl before verl-project/verl#7300);
//            rewards at masked positions are ignored either way. Then whitened over every kept
//            token of every scorable row: (R - mean) / sqrt(var + eps), var Bessel-corrected;
//            masked positions 0. The un-whitened R is verl's second output ("returns").  [verl]
//   reinforce_pp_baseline  a_i = r_i - mu_g, broadcast to the row's kept tokens, then whitened
//            over the batch's kept tokens as above.                                      [verl]
//
// Groups with a single scorable row ("singletons") are where implementations disagree; the
// `singleton` option chooses: .zero (A = 0 and, for the estimators that normalise advantages
// over the batch, excluded from that statistic: TRL's GRPO and RLOO), .raw (baseline 0 and
// std 1, so A = r / (1 + eps) for grpo, r for rloo/opo/rf++-baseline, alpha r / f_norm for gpg:
// verl), .error (throw: verl's pass@k). A group with no scorable row always gives 0.

/// Which advantage estimator to run.
public enum AdvantageEstimator: Int32, Sendable, CaseIterable {
    case grpo = 0, rloo = 1, opo = 2, gpg = 3, passK = 4, reinforcePP = 5, reinforcePPBaseline = 6

    var isTokenLevel: Bool { self == .reinforcePP || self == .reinforcePPBaseline }
    var name: String {
        switch self {
        case .grpo: "grpo"
        case .rloo: "rloo"
        case .opo: "opo"
        case .gpg: "gpg"
        case .passK: "passk"
        case .reinforcePP: "reinforce_pp"
        case .reinforcePPBaseline: "reinforce_pp_baseline"
        }
    }
}

/// What a masked-out position inside a row does to REINFORCE++'s running return.
public enum MaskedReturns: Int32, Sendable, CaseIterable {
    /// Passes it through unchanged (no discount, no reward): verl 0.9.1, where masked-out
    /// positions inside a response are tool/environment observations of a multi-turn rollout.
    case carry = 0
    /// Restarts it at 0: verl before verl-project/verl#7300.
    case reset = 1
}

/// What a group with exactly one scorable row gets (see the file comment).
public enum SingletonPolicy: Int32, Sendable, CaseIterable {
    case zero = 0, raw = 1, error = 2
}

/// GPG's batch correction factor alpha = N / M.
public enum GPGAlpha: Int32, Sendable, CaseIterable {
    /// M = scorable rows in groups whose rewards are not all equal (the GPG paper).
    case informative = 0
    /// M = scorable rows whose reward is not zero (verl's compute_gpg_outcome_advantage).
    case nonzeroReward = 1
    /// alpha = EstimatorConfig.gpgAlpha.
    case fixed = 2
}

public struct EstimatorConfig: Sendable {
    public var estimator: AdvantageEstimator
    public var singleton: SingletonPolicy
    /// grpo: group/batch/none; passk: group/none (norm_adv_by_std_in_grpo).
    public var scaleRewards: ScaleRewards
    /// rloo: batch z-score of the advantages (TRL's normalize_advantages).
    public var normalize: Bool
    /// Added to the std (grpo, rloo normalize, passk) or to the variance (REINFORCE++ whitening).
    public var epsilon: Double
    /// REINFORCE++ discount.
    public var gamma: Double
    /// REINFORCE++: what a masked-out position inside a row does to the running return.
    public var maskedReturns: MaskedReturns
    public var gpgAlphaMode: GPGAlpha
    public var gpgAlpha: Double
    public var gpgFNorm: Double

    public init(estimator: AdvantageEstimator, singleton: SingletonPolicy = .zero,
                scaleRewards: ScaleRewards = .group, normalize: Bool = false, epsilon: Double = 1e-4,
                gamma: Double = 1, maskedReturns: MaskedReturns = .carry, gpgAlphaMode: GPGAlpha = .informative,
                gpgAlpha: Double = 1, gpgFNorm: Double = 1) {
        self.estimator = estimator
        self.singleton = singleton
        self.scaleRewards = scaleRewards
        self.normalize = normalize
        self.epsilon = epsilon
        self.gamma = gamma
        self.maskedReturns = maskedReturns
        self.gpgAlphaMode = gpgAlphaMode
        self.gpgAlpha = gpgAlpha
        self.gpgFNorm = gpgFNorm
    }

    func validate() throws(GRPOError) {
        guard epsilon.isFinite, epsilon >= 0 else {
            throw GRPOError(.value, "epsilon must be finite and >= 0, got \(epsilon)")
        }
        switch estimator {
        case .passK:
            guard scaleRewards != .batch else {
                throw GRPOError(.value, "pass@k supports scale_rewards 'group' or 'none', got 'batch'")
            }
            guard singleton != .raw else {
                throw GRPOError(.value, "pass@k needs two scorable rows per group: singleton must be 'zero' or 'error', got 'raw'")
            }
        case .gpg:
            guard gpgFNorm.isFinite, gpgFNorm > 0 else {
                throw GRPOError(.value, "f_norm must be finite and > 0, got \(gpgFNorm)")
            }
            if gpgAlphaMode == .fixed {
                guard gpgAlpha.isFinite, gpgAlpha > 0 else {
                    throw GRPOError(.value, "alpha must be finite and > 0, got \(gpgAlpha)")
                }
            }
        case .reinforcePP:
            guard gamma.isFinite, gamma >= 0, gamma <= 1 else {
                throw GRPOError(.value, "gamma must be in [0, 1], got \(gamma)")
            }
        case .grpo, .rloo, .opo, .reinforcePPBaseline:
            break
        }
    }
}

/// Per-group counts computed once, serially (cheap, and lets .error throw before any work).
struct GroupScan {
    var valid: [Int]      // scorable rows per group
    var spread: [Bool]    // >= 2 scorable rows and max > min
}

public enum Estimators {
    /// Groups per parallel chunk (fixed: the split never depends on the thread count; every
    /// per-group result is independent of the split anyway).
    static let groupsPerChunk = 1024
    static let rowsPerChunk = 1 << 12

    static func checkFinite<T: BinaryFloatingPoint>(_ x: UnsafeBufferPointer<T>, _ name: String) throws(GRPOError) {
        for v in x where v.isInfinite {
            throw GRPOError(.value, "\(name) must be finite or NaN (missing), got \(Double(v))")
        }
    }

    static func scan<T: BinaryFloatingPoint>(
        _ rewards: UnsafeBufferPointer<T>, _ groups: RowGroups
    ) -> GroupScan {
        var valid = [Int](repeating: 0, count: groups.count)
        var spread = [Bool](repeating: false, count: groups.count)
        valid.withUnsafeMutableBufferPointer { valid in
            spread.withUnsafeMutableBufferPointer { spread in
                withMembers(groups) { member in
                    for g in 0..<groups.count {
                        var k = 0, lo = Double.infinity, hi = -Double.infinity
                        for i in member(g) {
                            let r = Double(rewards[i])
                            if r.isNaN { continue }
                            k += 1
                            lo = Swift.min(lo, r); hi = Swift.max(hi, r)
                        }
                        valid[g] = k
                        spread[g] = k >= 2 && hi > lo
                    }
                }
            }
        }
        return GroupScan(valid: valid, spread: spread)
    }

    /// Calls `body` with a function giving the rows of group g as a buffer (no ARC traffic).
    @inline(__always)
    static func withMembers<R, E: Error>(_ groups: RowGroups,
                               _ body: ((Int) -> UnsafeBufferPointer<Int>) throws(E) -> R) throws(E) -> R {
        try groups.order.withUnsafeBufferPointer { (order) throws(E) in
            try groups.starts.withUnsafeBufferPointer { (starts) throws(E) in
                try body { g in UnsafeBufferPointer(rebasing: order[starts[g]..<starts[g + 1]]) }
            }
        }
    }

    static func throwOnSingleton(_ scan: GroupScan, _ groups: RowGroups, _ ids: UnsafeBufferPointer<Int64>?,
                                 _ config: EstimatorConfig) throws(GRPOError) {
        guard config.singleton == .error else { return }
        for g in 0..<groups.count where scan.valid[g] == 1 {
            throw GRPOError(.value,
                "\(config.estimator.name): \(groups.describe(g, ids: ids)) has a single scorable row "
                + "(singleton='error'); pass singleton='zero' to give such groups advantage 0")
        }
    }

    /// Runs `body(g)` for every group, chunked deterministically.
    static func forEachGroup(_ groups: RowGroups, _ body: (Int) -> Void) throws(GRPOError) {
        try Parallel.forEachChunk(count: groups.count, chunkSize: groupsPerChunk) { _, range in
            for g in range { body(g) }
        }
    }

    /// One advantage per row. `rewards` (rows); `lengths` (rows) response lengths, required by
    /// opo and ignored otherwise; `ids` only for error messages. Token-level estimators throw.
    public static func rowAdvantages<T: BinaryFloatingPoint>(
        rewards: UnsafeBufferPointer<T>, groups: RowGroups, ids: UnsafeBufferPointer<Int64>? = nil,
        lengths: UnsafeBufferPointer<T>?, config: EstimatorConfig,
        advantages: UnsafeMutableBufferPointer<T>
    ) throws(GRPOError) {
        try config.validate()
        let n = groups.rows
        guard !config.estimator.isTokenLevel else {
            throw GRPOError(.value, "\(config.estimator.name) is a token-level estimator: use the token-level entry point")
        }
        guard rewards.count >= n else { throw GRPOError(.shape, "rewards holds \(rewards.count) elements, expected \(n)") }
        guard advantages.count >= n else { throw GRPOError(.shape, "advantages must hold \(n) elements") }
        let rw = UnsafeBufferPointer(rebasing: rewards[0..<n])
        try checkFinite(rw, "rewards")
        if config.estimator == .opo {
            guard let lengths else { throw GRPOError(.null, "opo needs response lengths (lengths is NULL)") }
            guard lengths.count >= n else { throw GRPOError(.shape, "lengths holds \(lengths.count) elements, expected \(n)") }
            for i in 0..<n {
                let l = Double(lengths[i])
                guard l.isFinite, l >= 0 else { throw GRPOError(.value, "lengths must be finite and >= 0, got \(l) at row \(i)") }
            }
        }
        // Phase 1: raw advantages in Double, NaN where the row is excluded. Shuffled groups are
        // first gathered into group order (one random-access pass instead of several); the
        // per-group arithmetic is the same (rows in ascending order), so are the bits.
        var a = [Double](repeating: .nan, count: n)
        let cfg = config
        var batchStd = Double.nan
        if cfg.estimator == .grpo && cfg.scaleRewards == .batch {
            var all = [Double](repeating: .nan, count: n)
            for i in 0..<n { all[i] = Double(rw[i]) }
            batchStd = try all.withUnsafeBufferPointer { (all) throws(GRPOError) in try Advantages.batchMeanStd(all).std }
        }
        let sc: GroupScan
        if groups.isIdentity {
            sc = scan(rw, groups)
            try throwOnSingleton(sc, groups, ids, config)
            try a.withUnsafeMutableBufferPointer { (a) throws(GRPOError) in
                try phase1(rw, lengths, groups, sc, cfg, batchStd, a)
            }
        } else {
            let gathered = RowGroups(gathered: groups)
            let order = groups.order
            let rg = [T](unsafeUninitializedCapacity: n) { b, c in
                for j in 0..<n { b[j] = rw[order[j]] }
                c = n
            }
            let lg: [T]? = lengths.map { l in
                [T](unsafeUninitializedCapacity: n) { b, c in
                    for j in 0..<n { b[j] = l[order[j]] }
                    c = n
                }
            }
            sc = rg.withUnsafeBufferPointer { scan($0, gathered) }
            try throwOnSingleton(sc, groups, ids, config)
            var ag = [Double](repeating: .nan, count: n)
            try rg.withUnsafeBufferPointer { (rgb) throws(GRPOError) in
                try (lg ?? []).withUnsafeBufferPointer { (lgb) throws(GRPOError) in
                    try ag.withUnsafeMutableBufferPointer { (agb) throws(GRPOError) in
                        try phase1(rgb, lg == nil ? nil : lgb, gathered, sc, cfg, batchStd, agb)
                    }
                }
            }
            for j in 0..<n { a[order[j]] = ag[j] }
        }

        // Phase 2: batch-level post-processing.
        var scale = 1.0, shift = 0.0, divisor = 1.0
        switch config.estimator {
        case .rloo where config.normalize:
            let (m, s) = try a.withUnsafeBufferPointer { (a) throws(GRPOError) in try Advantages.batchMeanStd(a) }
            shift = m
            divisor = s + config.epsilon
        case .gpg:
            switch config.gpgAlphaMode {
            case .fixed:
                scale = config.gpgAlpha
            case .informative:
                var m = 0
                for g in 0..<groups.count where sc.spread[g] { m += sc.valid[g] }
                scale = Double(n) / Double(Swift.max(m, 1))
            case .nonzeroReward:
                var m = 0
                for i in 0..<n where !Double(rw[i]).isNaN && rw[i] != 0 { m += 1 }
                scale = Double(n) / Double(Swift.max(m, 1))
            }
        default:
            break
        }
        let (sh, dv, sc2) = (shift, divisor, scale)
        let normalize = config.estimator == .rloo && config.normalize
        try a.withUnsafeBufferPointer { (a) throws(GRPOError) in
            try Parallel.forEachChunk(count: n, chunkSize: rowsPerChunk) { _, range in
                for i in range {
                    var x = a[i]
                    if normalize { x = (x - sh) / dv } else if sc2 != 1 { x = sc2 * x }
                    advantages[i] = x.isNaN ? 0 : T(x)
                }
            }
        }
    }

    static func phase1<T: BinaryFloatingPoint>(
        _ rw: UnsafeBufferPointer<T>, _ lengths: UnsafeBufferPointer<T>?, _ groups: RowGroups,
        _ sc: GroupScan, _ cfg: EstimatorConfig, _ batchStd: Double, _ a: UnsafeMutableBufferPointer<Double>
    ) throws(GRPOError) {
        try sc.valid.withUnsafeBufferPointer { (valid) throws(GRPOError) in
            try withMembers(groups) { (member) throws(GRPOError) in
                try forEachGroup(groups) { g in
                    groupAdvantages(member(g), valid[g], rw, lengths, cfg, batchStd, a)
                }
            }
        }
    }

    /// Phase 1 of one group: writes `a[i]` for the group's rows (NaN = excluded).
    @inline(__always)
    static func groupAdvantages<T: BinaryFloatingPoint>(
        _ rows: UnsafeBufferPointer<Int>, _ k: Int, _ rewards: UnsafeBufferPointer<T>,
        _ lengths: UnsafeBufferPointer<T>?, _ cfg: EstimatorConfig, _ batchStd: Double,
        _ a: UnsafeMutableBufferPointer<Double>
    ) {
        if k == 0 { return }  // stays NaN -> 0
        let singleton = k == 1
        if singleton && cfg.singleton == .zero { return }
        let raw = singleton  // here: singleton with policy .raw (.error threw earlier)
        let (mu0, sd0) = nanMeanStd(count: rows.count) { Double(rewards[rows[$0]]) }
        switch cfg.estimator {
        case .grpo:
            let mu = raw ? 0 : mu0
            let sd: Double
            switch cfg.scaleRewards {
            case .group: sd = raw ? 1 : sd0
            case .batch: sd = batchStd
            case .none: sd = 0
            }
            for i in rows {
                var x = Double(rewards[i]) - mu
                if cfg.scaleRewards != .none { x = x / (sd + cfg.epsilon) }
                a[i] = x
            }
        case .rloo:
            let f = raw ? 1 : Double(k) / Double(k - 1)
            let mu = raw ? 0 : mu0
            for i in rows { a[i] = (Double(rewards[i]) - mu) * f }
        case .gpg:
            let mu = raw ? 0 : mu0
            for i in rows { a[i] = (Double(rewards[i]) - mu) / cfg.gpgFNorm }
        case .opo:
            var b = 0.0
            if !raw {
                var num = 0.0, den = 0.0, lo = Double.infinity, hi = -Double.infinity
                for i in rows {
                    let r = Double(rewards[i])
                    if r.isNaN { continue }
                    let l = lengths.map { Double($0[i]) } ?? 1
                    num += l * r
                    den += l
                    lo = Swift.min(lo, r); hi = Swift.max(hi, r)
                }
                if den == 0 { return }  // no token to weight by: the group gets 0
                b = Swift.min(Swift.max(num / den, lo), hi)
            }
            for i in rows { a[i] = Double(rewards[i]) - b }
        case .passK:
            // k >= 2 here (singletons are zero or threw).
            var best = -1, bestValue = -Double.infinity, second = -Double.infinity
            for i in rows {
                let r = Double(rewards[i])
                if r.isNaN { continue }
                if best < 0 || r > bestValue {
                    if best >= 0 { second = bestValue }
                    best = i; bestValue = r
                } else if r > second {
                    second = r
                }
            }
            var adv = bestValue - second
            if cfg.scaleRewards == .group { adv = adv / (sd0 + cfg.epsilon) }
            for i in rows where !Double(rewards[i]).isNaN { a[i] = 0 }
            if best >= 0 { a[best] = adv }
        case .reinforcePP, .reinforcePPBaseline:
            return
        }
        // Unscorable rows of a scorable group stay excluded.
        for i in rows where Double(rewards[i]).isNaN { a[i] = .nan }
    }

    /// Rows whose group has zero reward spread: fewer than 2 scorable rows, or
    /// max - min <= tolerance over the scorable ones. Every row of such a group is flagged.
    public static func zeroSpread<T: BinaryFloatingPoint>(
        rewards: UnsafeBufferPointer<T>, groups: RowGroups, tolerance: Double,
        out: UnsafeMutableBufferPointer<UInt8>
    ) throws(GRPOError) {
        let n = groups.rows
        guard tolerance.isFinite, tolerance >= 0 else {
            throw GRPOError(.value, "tolerance must be finite and >= 0, got \(tolerance)")
        }
        guard rewards.count >= n else { throw GRPOError(.shape, "rewards holds \(rewards.count) elements, expected \(n)") }
        guard out.count >= n else { throw GRPOError(.shape, "zero_spread must hold \(n) elements") }
        try checkFinite(UnsafeBufferPointer(rebasing: rewards[0..<n]), "rewards")
        try withMembers(groups) { (member) throws(GRPOError) in try forEachGroup(groups) { g in
            var k = 0, lo = Double.infinity, hi = -Double.infinity
            for i in member(g) {
                let r = Double(rewards[i])
                if r.isNaN { continue }
                k += 1
                lo = Swift.min(lo, r); hi = Swift.max(hi, r)
            }
            let flag: UInt8 = (k < 2 || hi - lo <= tolerance) ? 1 : 0
            for i in member(g) { out[i] = flag }
        } }
    }
}
