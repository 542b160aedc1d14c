import Testing
@testable import GRPOSwift
import CGRPOBridge

private func rowAdv(_ r: [Double], ids: [Int64]? = nil, g: Int? = nil, lengths: [Double]? = nil,
                    _ cfg: EstimatorConfig) throws(GRPOError) -> [Double] {
    try Estimators.rowAdvantages(rewards: r, groupIDs: ids, numGenerations: g, lengths: lengths, config: cfg)
}

private func close(_ a: [Double], _ b: [Double], tol: Double = 1e-13) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { abs($0 - $1) <= tol * Swift.max(1, abs($1)) }
}

/// Random rewards with ~10% NaN and ragged, shuffled, sparse int64 group ids.
private func randomBatch(_ n: Int, seed: UInt64) -> (r: [Double], ids: [Int64]) {
    var rng = SplitMix(seed: seed)
    var r = (0..<n).map { _ in rng.uniform(-2, 2) }
    for i in 0..<n where rng.nextDouble() < 0.1 { r[i] = .nan }
    var ids = [Int64](), label: Int64 = -1_000_000_007
    while ids.count < n {
        let size = 1 + Int(rng.next() % 6)
        for _ in 0..<size where ids.count < n { ids.append(label) }
        label += 7919 * Int64(1 + rng.next() % 3)
    }
    // Fisher-Yates shuffle of the ids (rows of a group are scattered through the batch).
    for i in stride(from: n - 1, to: 0, by: -1) {
        let j = Int(rng.next() % UInt64(i + 1))
        ids.swapAt(i, j)
    }
    return (r, ids)
}

/// Plain reference: group members in row order, formulas of the file comment of Estimators.swift.
private func members(_ ids: [Int64]) -> [[Int]] {
    var order: [Int64] = [], map: [Int64: [Int]] = [:]
    for (i, id) in ids.enumerated() {
        if map[id] == nil { order.append(id) }
        map[id, default: []].append(i)
    }
    return order.map { map[$0] ?? [] }
}

@Suite struct EstimatorTests {
    @Test func rlooClosedForm() throws {
        // Leave-one-out baselines (11/3, 10/3, 3, 2).
        let a = try rowAdv([1, 2, 3, 6], g: 4, EstimatorConfig(estimator: .rloo))
        #expect(close(a, [-8.0 / 3, -4.0 / 3, 0, 4], tol: 1e-15))
    }

    @Test func opoGpgPasskClosedForms() throws {
        #expect(try rowAdv([1, 0], g: 2, lengths: [3, 1], EstimatorConfig(estimator: .opo)) == [0.25, -0.75])
        #expect(try rowAdv([1, 0, 1, 1], g: 2, EstimatorConfig(estimator: .gpg)) == [1, -1, 0, 0])
        let verl = try rowAdv([1, 0, 1, 1], g: 2, EstimatorConfig(estimator: .gpg, gpgAlphaMode: .nonzeroReward))
        #expect(close(verl, [2.0 / 3, -2.0 / 3, 0, 0], tol: 1e-15))
        let pk = try rowAdv([0.2, 0.9, 0.5], g: 3, EstimatorConfig(estimator: .passK, scaleRewards: .none))
        #expect(close(pk, [0, 0.4, 0], tol: 1e-14))
        // A tied maximum gives nobody an advantage.
        #expect(try rowAdv([0.9, 0.2, 0.9], g: 3, EstimatorConfig(estimator: .passK)) == [0, 0, 0])
    }

    @Test func grpoEqualsGroupAdvantagesBitwise() throws {
        var rng = SplitMix(seed: 11)
        var r = (0..<(8 * 50)).map { _ in rng.uniform(0, 1) }
        for i in 16..<24 { r[i] = 0.7 }
        r[3] = .nan
        for scale in ScaleRewards.allCases {
            let expected = try Advantages.compute(rewards: r, config: AdvantagesConfig(numGenerations: 8, scaleRewards: scale))
            let got = try rowAdv(r, g: 8, EstimatorConfig(estimator: .grpo, scaleRewards: scale))
            #expect(got == expected.advantages)
        }
    }

    @Test func raggedGroupsMatchReference() throws {
        let (r, ids) = randomBatch(500, seed: 3)
        let groups = members(ids)
        // RLOO with the literal leave-one-out mean; singletons 0 (TRL).
        var want = [Double](repeating: 0, count: r.count)
        for rows in groups {
            let v = rows.filter { !r[$0].isNaN }
            guard v.count >= 2 else { continue }
            for i in v {
                let others = v.filter { $0 != i }.map { r[$0] }
                want[i] = r[i] - others.reduce(0, +) / Double(others.count)
            }
        }
        #expect(close(try rowAdv(r, ids: ids, EstimatorConfig(estimator: .rloo)), want, tol: 1e-12))
        // GRPO, verl's singleton convention (baseline 0, std 1).
        for rows in groups {
            let v = rows.filter { !r[$0].isNaN }
            let x = v.map { r[$0] }
            for i in rows { want[i] = 0 }
            if x.count == 1 { want[v[0]] = x[0] / (1 + 1e-4); continue }
            guard x.count >= 2 else { continue }
            let m = x.reduce(0, +) / Double(x.count)
            let sd = (x.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(x.count - 1)).squareRoot()
            for i in v { want[i] = (r[i] - m) / (sd + 1e-4) }
        }
        #expect(close(try rowAdv(r, ids: ids, EstimatorConfig(estimator: .grpo, singleton: .raw)), want, tol: 1e-12))
    }

    @Test(arguments: AdvantageEstimator.allCases.filter { !$0.isTokenLevel })
    func permutationAndRelabelling(estimator: AdvantageEstimator) throws {
        let (r, ids) = randomBatch(300, seed: 5)
        let lengths = (0..<300).map { Double($0 % 7) }
        let cfg = EstimatorConfig(estimator: estimator, singleton: .zero)
        let base = try rowAdv(r, ids: ids, lengths: lengths, cfg)
        // Relabelled ids (order within groups unchanged): identical bits.
        #expect(try rowAdv(r, ids: ids.map { 5 - 3 * $0 }, lengths: lengths, cfg) == base)
        // Reversed rows: results reversed (sums run in another order: a few ulps).
        let rev = try rowAdv(r.reversed(), ids: ids.reversed(), lengths: lengths.reversed(), cfg)
        #expect(close(rev, base.reversed(), tol: 1e-12))
    }

    @Test func singletonPolicies() throws {
        // Group 9 has one scorable row (2.0), group 4 none.
        let r: [Double] = [2, .nan, .nan, 1, 3]
        let ids: [Int64] = [9, 9, 4, 7, 7]
        #expect(try rowAdv(r, ids: ids, EstimatorConfig(estimator: .rloo, singleton: .zero)) == [0, 0, 0, -2, 2])
        #expect(try rowAdv(r, ids: ids, EstimatorConfig(estimator: .rloo, singleton: .raw)) == [2, 0, 0, -2, 2])
        #expect(try rowAdv(r, ids: ids, lengths: [1, 1, 1, 1, 1], EstimatorConfig(estimator: .opo, singleton: .raw)) == [2, 0, 0, -1, 1])
        #expect(try rowAdv(r, ids: ids, lengths: [1, 1, 1, 1, 1], EstimatorConfig(estimator: .opo)) == [0, 0, 0, -1, 1])
        #expect(throws: GRPOError.self) {
            try rowAdv(r, ids: ids, EstimatorConfig(estimator: .passK, singleton: .error))
        }
        #expect(try rowAdv(r, ids: ids, EstimatorConfig(estimator: .passK, singleton: .zero, scaleRewards: .none)) == [0, 0, 0, 0, 2])
    }

    @Test func invalidInputsThrow() {
        #expect(throws: GRPOError.self) { try rowAdv([1, .infinity], g: 2, EstimatorConfig(estimator: .grpo)) }
        #expect(throws: GRPOError.self) { try rowAdv([1, 2, 3], g: 2, EstimatorConfig(estimator: .grpo)) }
        #expect(throws: GRPOError.self) { try rowAdv([1, 2], EstimatorConfig(estimator: .grpo)) }
        #expect(throws: GRPOError.self) { try rowAdv([1, 2], ids: [0, 0], g: 2, EstimatorConfig(estimator: .grpo)) }
        #expect(throws: GRPOError.self) { try rowAdv([1, 2], g: 2, EstimatorConfig(estimator: .opo)) }
        #expect(throws: GRPOError.self) { try rowAdv([1, 2], g: 2, lengths: [1, -1], EstimatorConfig(estimator: .opo)) }
        #expect(throws: GRPOError.self) { try rowAdv([1, 2], g: 2, EstimatorConfig(estimator: .gpg, gpgFNorm: 0)) }
        #expect(throws: GRPOError.self) { try rowAdv([1, 2], g: 2, EstimatorConfig(estimator: .reinforcePP)) }
        #expect(throws: GRPOError.self) {
            try Estimators.tokenAdvantages(rewards: [1.0, 2], mask: [1, 1, 1], rows: 2, cols: 2,
                                           config: EstimatorConfig(estimator: .reinforcePP))
        }
        #expect(throws: GRPOError.self) {
            try Estimators.tokenAdvantages(rewards: [1.0, 2], mask: [1, 1, 1, 1], rows: 2, cols: 2,
                                           config: EstimatorConfig(estimator: .reinforcePP, gamma: 2))
        }
    }

    @Test func reinforcePPClosedForm() throws {
        // gamma 0.5: returns (0.5, 1) and (0, 0); mean 0.375, Bessel var 0.6875 / 3.
        let a = try Estimators.tokenAdvantages(rewards: [1.0, 0], mask: [1, 1, 1, 1], rows: 2, cols: 2,
                                               config: EstimatorConfig(estimator: .reinforcePP, epsilon: 1e-8, gamma: 0.5))
        let s = (0.6875 / 3 + 1e-8).squareRoot()
        #expect(close(a, [0.5, 1, 0, 0].map { ($0 - 0.375) / s }, tol: 1e-14))
        // .reset: a hole in the mask restarts the return; token rewards at masked positions are ignored.
        let tok = try Estimators.tokenAdvantages(rewards: [1.0, 99, 1, 0, 0, 0], mask: [1, 0, 1, 1, 1, 1], rows: 2, cols: 3,
                                                 config: EstimatorConfig(estimator: .reinforcePP, epsilon: 0, gamma: 1,
                                                                         maskedReturns: .reset))
        // Returns: row 0 (1, -, 1), row 1 (0, 0, 0) -> kept values 1, 1, 0, 0, 0.
        let m = 0.4, sd = ((2 * 0.36 + 3 * 0.16) / 4).squareRoot()
        #expect(close(tok, [(1 - m) / sd, 0, (1 - m) / sd, -m / sd, -m / sd, -m / sd], tol: 1e-14))
    }

    @Test func reinforcePPCarriesReturnsThroughMaskedTokens() throws {
        // .carry (the default, verl 0.9.1): the masked position passes the running return through
        // without discount and without its reward: row 0 returns (1 + 0.5 * 1, -, 1) at gamma 0.5.
        let cfg = EstimatorConfig(estimator: .reinforcePP, epsilon: 0, gamma: 0.5)
        #expect(cfg.maskedReturns == .carry)
        let (a, ret) = try Estimators.reinforcePPAdvantagesAndReturns(
            rewards: [1.0, 99, 1, 0, 0, 0], mask: [1, 0, 1, 1, 1, 1], rows: 2, cols: 3, config: cfg)
        #expect(ret == [1.5, 0, 1, 0, 0, 0])
        let kept = [1.5, 1, 0, 0, 0]
        let m = kept.reduce(0, +) / 5
        let sd = (kept.map { ($0 - m) * ($0 - m) }.reduce(0, +) / 4).squareRoot()
        #expect(close(a, [(1.5 - m) / sd, 0, (1 - m) / sd, -m / sd, -m / sd, -m / sd], tol: 1e-14))
        #expect(a == (try Estimators.tokenAdvantages(rewards: [1.0, 99, 1, 0, 0, 0], mask: [1, 0, 1, 1, 1, 1],
                                                     rows: 2, cols: 3, config: cfg)))
        // Outcome rewards sit on the last kept token; trailing masked positions stay 0; an
        // unscorable (NaN) row gets returns 0; returns are written even when fewer than 2 tokens
        // enter the whitening (advantages all 0).
        let (a1, r1) = try Estimators.reinforcePPAdvantagesAndReturns(
            rewards: [2.0, .nan], mask: [1, 1, 0, 1, 1, 1], rows: 2, cols: 3,
            config: EstimatorConfig(estimator: .reinforcePP, gamma: 0.5))
        #expect(r1 == [1, 2, 0, 0, 0, 0])
        #expect(a1[0] < 0 && a1[1] > 0 && a1[2] == 0 && Array(a1[3...]) == [0, 0, 0])
        let (a2, r2) = try Estimators.reinforcePPAdvantagesAndReturns(
            rewards: [Float(3)], mask: [0, 1], rows: 1, cols: 2, config: EstimatorConfig(estimator: .reinforcePP))
        #expect(r2 == [0, 3] && a2 == [0, 0])
    }

    @Test func returnsAreReinforcePPOnly() {
        #expect(throws: GRPOError.self) {
            try Estimators.tokenArrays([1.0, 2], [1, 1], 2, 1, nil, 2, EstimatorConfig(estimator: .reinforcePPBaseline),
                                       withReturns: true)
        }
    }

    @Test func reinforcePPBaselineWeightsRowsByLength() throws {
        // Groups (1, 3) and (5, 5): centred (-1, 1, 0, 0), row lengths (2, 1, 1, 1).
        let mask: [UInt8] = [1, 1, 1, 0, 1, 0, 1, 0]
        let a = try Estimators.tokenAdvantages(rewards: [1.0, 3, 5, 5], mask: mask, rows: 4, cols: 2, numGenerations: 2,
                                               config: EstimatorConfig(estimator: .reinforcePPBaseline, epsilon: 0))
        let vals = [-1.0, -1, 1, 0, 0]
        let m = vals.reduce(0, +) / 5
        let sd = (vals.map { ($0 - m) * ($0 - m) }.reduce(0, +) / 4).squareRoot()
        let w = { (x: Double) in (x - m) / sd }
        #expect(close(a, [w(-1), w(-1), w(1), 0, w(0), 0, w(0), 0], tol: 1e-14))
    }

    @Test func threadCountDoesNotChangeBits() throws {
        let (r, ids) = randomBatch(50_000, seed: 9)
        let cols = 17
        var rng = SplitMix(seed: 4)
        let mask = (0..<(r.count * cols)).map { _ in UInt8(rng.next() % 4 == 0 ? 0 : 1) }
        let before = Parallel.numThreads
        defer { try? Parallel.setNumThreads(before) }
        var outs: [[[Double]]] = []
        for threads in [1, 2, 3] {
            try Parallel.setNumThreads(threads)
            outs.append([
                try rowAdv(r, ids: ids, EstimatorConfig(estimator: .grpo, scaleRewards: .batch)),
                try rowAdv(r, ids: ids, EstimatorConfig(estimator: .rloo, normalize: true)),
                try Estimators.tokenAdvantages(rewards: r, mask: mask, rows: r.count, cols: cols,
                                               config: EstimatorConfig(estimator: .reinforcePP, gamma: 0.97)),
            ])
        }
        #expect(outs[0] == outs[1] && outs[0] == outs[2])
    }

    @Test func zeroSpreadFlags() throws {
        let z = try Estimators.zeroSpread(rewards: [1.0, 1, 0, 1, .nan, 2, .nan, .nan],
                                          groupIDs: [4, 4, 9, 9, 1, 1, 7, 7])
        #expect(z == [true, true, false, false, true, true, true, true])
        #expect(try Estimators.zeroSpread(rewards: [0.5, 0.6], numGenerations: 2, tolerance: 0.2) == [true, true])
    }

    @Test func cABIRejectsBadConfig() {
        var cfg = grpo_estimator_config(num_generations: 2, estimator: 42, singleton: 0, scale_rewards: 0,
                                        normalize: 0, gpg_alpha_mode: 0, masked_returns: 0, epsilon: 1e-4,
                                        gamma: 1, gpg_alpha: 1, gpg_f_norm: 1)
        var r: [Double] = [1, 2], out: [Double] = [0, 0]
        var err = [CChar](repeating: 0, count: 256)
        let st = grpo_estimator_advantages_f64(&r, 2, nil, nil, &cfg, &out, &err, 256)
        #expect(st == GRPO_ERR_VALUE)
        cfg.estimator = 1
        #expect(grpo_estimator_advantages_f64(&r, 2, nil, nil, &cfg, &out, &err, 256) == GRPO_OK)
        #expect(out == [-1, 1])
        #expect(grpo_estimator_advantages_f64(&r, 2, nil, nil, &cfg, nil, &err, 256) == GRPO_ERR_NULL)
        cfg.masked_returns = 2
        #expect(grpo_estimator_advantages_f64(&r, 2, nil, nil, &cfg, &out, &err, 256) == GRPO_ERR_VALUE)
    }

    @Test func cABITokenReturns() {
        var cfg = grpo_estimator_config(num_generations: 1, estimator: 5, singleton: 0, scale_rewards: 0,
                                        normalize: 0, gpg_alpha_mode: 0, masked_returns: 1, epsilon: 0,
                                        gamma: 1, gpg_alpha: 1, gpg_f_norm: 1)
        var r: [Float] = [1, 0, 0, 1], mask: [UInt8] = [1, 0, 1, 1]
        var adv = [Float](repeating: 9, count: 4), ret = [Float](repeating: 9, count: 4)
        var err = [CChar](repeating: 0, count: 256)
        // RESET: row 0 token rewards (1, -) -> returns (1, 0); row 1 (0, 1) -> (1, 1).
        #expect(grpo_token_advantages_returns_f32(&r, 2, 2, 2, &mask, nil, &cfg, &adv, &ret, &err, 256) == GRPO_OK)
        #expect(ret == [1, 0, 1, 1] && adv[1] == 0)
        var adv2 = [Float](repeating: 9, count: 4)
        #expect(grpo_token_advantages_f32(&r, 2, 2, 2, &mask, nil, &cfg, &adv2, &err, 256) == GRPO_OK)
        #expect(adv2 == adv)
        #expect(grpo_token_advantages_returns_f32(&r, 2, 2, 2, &mask, nil, &cfg, &adv, nil, &err, 256) == GRPO_OK)
        #expect(adv == adv2)
        cfg.estimator = 6  // reinforce_pp_baseline has no separate returns
        var r1: [Float] = [1, 0]
        #expect(grpo_token_advantages_returns_f32(&r1, 2, 2, 1, &mask, nil, &cfg, &adv, &ret, &err, 256) == GRPO_ERR_VALUE)
    }
}
