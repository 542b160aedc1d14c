import Testing
@testable import GRPOSwift
import CGRPOBridge

// Issue-11 options of the policy loss: KL estimators (and their clamp), GMPO, the GSPO-token
// level and dual-clip PPO. Gradients are checked against central differences in Double, with
// the straight-through and stop-gradient parts held fixed as their definitions say.

/// The sequence-level log-ratio of each row, sum_t((lp - old) m) / max(L, 1) (GSPO's log s_i).
func sequenceLogRatios(_ p: LossProblem, lp: [Double]? = nil) -> [Double] {
    let x = lp ?? p.lp
    return (0..<p.B).map { i in
        var s = 0.0, n = 0
        for t in 0..<p.T where p.mask[i * p.T + t] != 0 { s += x[i * p.T + t] - p.old[i * p.T + t]; n += 1 }
        return s / Double(max(n, 1))
    }
}

func gmpoConfig(beta: Double = 0, quantile: Double = 1, eps: Double = 0.4) -> LossConfig {
    var c = LossConfig(lossType: .gmpo, importanceSamplingLevel: .token)
    c.beta = beta
    c.epsilon = eps
    c.epsilonHigh = eps + 0.05
    c.topEntropyQuantile = quantile
    return c
}

/// Asserts that a gradient matches an expected vector within the finite-difference tolerance.
func expectGradient(_ got: [Double], _ expected: [Double], _ mask: [UInt8], _ what: String) {
    for k in 0..<got.count {
        if mask[k] == 0 {
            #expect(got[k] == 0, "\(what) masked token \(k)")
        } else {
            #expect(abs(got[k] - expected[k]) <= 1e-7 + 1e-6 * abs(expected[k]),
                    "\(what) token \(k): \(got[k]) vs \(expected[k])")
        }
    }
}

@Suite struct KLEstimatorTests {
    static let clamps: [Double?] = [nil, 0.08]

    /// Closed forms of each estimator and its d/d lp at a few gaps, with and without a clamp.
    @Test func closedForms() {
        for d in [-2.5, -0.3, 0.0, 0.7, 3.0] {
            let x = -d
            let k3 = Double.exp(d) - d - 1
            let cases: [(KLEstimator, Double, Double)] = [
                (.k3, k3, 1 - Double.exp(d)), (.k1, x, 1), (.k2, x * x / 2, x),
                (.abs, Swift.abs(x), x > 0 ? 1 : (x < 0 ? -1 : 0)),
                (.k1Plus, x, x), (.k3Plus, k3, x), (.absPlus, Swift.abs(x), x)]
            for (est, v, g) in cases {
                let e = est.evaluate(d, clamp: nil)
                #expect(abs(e.value - v) <= 4e-15 * max(1, abs(v)), "\(est) d=\(d)")
                #expect(abs(e.grad - g) <= 4e-15 * max(1, abs(g)), "\(est) grad d=\(d)")
                let c = est.evaluate(d, clamp: 0.5)
                #expect(abs(c.value - min(max(v, -0.5), 0.5)) <= 4e-15, "\(est) clamped d=\(d)")
                let clamped = !(v > -0.5 && v < 0.5)
                let expectedGrad = clamped && !est.isStraightThrough ? 0 : g
                #expect(abs(c.grad - expectedGrad) < 1e-15, "\(est) clamped grad d=\(d)")
            }
        }
        // The default estimator is TRL's k3, computed as expm1(d) - d.
        #expect(LossConfig().klEstimator == .k3 && LossConfig().klClamp == nil)
        #expect(KLEstimator.k3.evaluate(1e-4, clamp: nil).value == Double.expm1(1e-4) - 1e-4)
    }

    /// d loss / d lp against central differences for every estimator, with and without a clamp,
    /// at token and sequence level, with and without bias-corrected KL. Straight-through
    /// estimators: value of X, gradient of k2 — the expected gradient is the direct derivative
    /// of the k2 loss with the ratio held fixed (old moved along with lp) plus the derivative
    /// through the ratio of the loss whose KL value is X (old moved, sign flipped).
    @Test(arguments: KLEstimator.allCases)
    func finiteDifferenceGradient(_ est: KLEstimator) throws {
        for clamp in Self.clamps {
            for (type, level) in [(LossType.grpo, ImportanceSamplingLevel.token), (.dapo, .sequence),
                                  (.cispo, .token), (.luspo, .token), (.sapo, .sequence)] {
                for bias in [false, true] {
                    let p = LossProblem(seed: 900 + UInt64(est.rawValue), spread: 0.3)
                    var cfg = makeConfig(type, level, beta: 0.3, bias: bias)
                    cfg.klEstimator = est
                    cfg.klClamp = clamp
                    let res = try lossRun(p, cfg)
                    var expected = [Double](repeating: 0, count: p.B * p.T)
                    let detached = type == .cispo
                    var k2 = cfg
                    k2.klEstimator = .k2
                    k2.klClamp = nil
                    for k in 0..<(p.B * p.T) where p.mask[k] != 0 {
                        if !est.isStraightThrough && !detached {
                            expected[k] = try centralDifference(p.lp, k) { x in try lossRun(p, cfg, lp: x).loss }
                            continue
                        }
                        let directCfg = est.isStraightThrough ? k2 : cfg
                        let direct = try centralDifference(p.lp, k) { x in
                            var o = p.old
                            o[k] += x[k] - p.lp[k]
                            return try lossRun(p, directCfg, lp: x, old: o).loss
                        }
                        // cispo's ratio is detached in its policy term: only the KL sees it.
                        let adv = detached ? [Double](repeating: 0, count: p.adv.count) : p.adv
                        let viaRatio = try centralDifference(p.old, k) { o in try lossRun(p, cfg, old: o, adv: adv).loss }
                        expected[k] = direct - viaRatio
                    }
                    expectGradient(res.grad, expected, p.mask, "\(est) clamp=\(String(describing: clamp)) \(type) \(level) bias=\(bias)")
                }
            }
        }
    }

    /// The kl metric is the token mean of the (clamped) estimate; beta scales only the term.
    @Test func klMetricAndClamp() throws {
        let p = LossProblem(seed: 31)
        for est in KLEstimator.allCases {
            for clamp in Self.clamps {
                var cfg = makeConfig(.bnpo, .token, beta: 0.5)
                cfg.klEstimator = est
                cfg.klClamp = clamp
                let m = try lossRun(p, cfg).metrics
                var sum = 0.0, n = 0.0
                for k in 0..<(p.B * p.T) where p.mask[k] != 0 {
                    sum += est.evaluate(p.ref[k] - p.lp[k], clamp: clamp).value
                    n += 1
                }
                #expect(abs(m.kl - sum / n) < 1e-14, "\(est)")
                #expect(abs(m.klTerm - 0.5 * sum / n) < 1e-14, "\(est)")  // bnpo: token mean
                if let c = clamp { #expect(abs(m.kl) <= c) }
            }
        }
    }

    /// A large |ref - lp| (50): k3 is exp(50)-sized but finite; with verl's clamp of 10 the
    /// estimate is 10 and, for k3, its gradient 0 (k3+ keeps k2's gradient x).
    @Test func largeGapWithClamp() throws {
        for sign in [1.0, -1.0] {
            var p = LossProblem(B: 3, T: 4, seed: 6)
            p.mask = [UInt8](repeating: 1, count: 12)
            p.ref = p.lp.map { $0 + 50 * sign }
            for est in KLEstimator.allCases {
                var cfg = makeConfig(.bnpo, .token, beta: 1)
                cfg.klEstimator = est
                cfg.klClamp = 10
                let zeroA = [Double](repeating: 0, count: p.B)
                let r = try lossRun(p, cfg, old: .some(nil), adv: zeroA)
                #expect(r.loss.isFinite && r.grad.allSatisfy { $0.isFinite }, "\(est)")
                let clampedValue = min(max(est.evaluate(50 * sign, clamp: nil).value, -10), 10)
                #expect(abs(r.metrics.kl - clampedValue) < 1e-12, "\(est) kl \(r.metrics.kl)")
                let g = r.grad[0] * 12  // bnpo: d loss / d lp = beta dkl / 12
                switch est {
                case .k3, .k2, .abs, .k1: #expect(g == 0, "\(est) clamped gradient")
                default: #expect(abs(g - (-50 * sign)) < 1e-9, "\(est) straight-through gradient \(g)")
                }
                // float32 stays finite too.
                let f = try PolicyLoss.compute(
                    batch: p.B, length: p.T, logps: p.lp.map { Float($0) }, advantages: zeroA.map { Float($0) },
                    mask: p.mask, refLogps: p.ref.map { Float($0) }, config: cfg)
                #expect(f.loss.isFinite && f.grad.allSatisfy { $0.isFinite }, "\(est) f32")
            }
        }
    }

    /// k3 through the generic estimator code (a clamp that never binds) gives the default's bits
    /// (float64; scalar path both ways).
    @Test func k3WithInertClampEqualsDefault() throws {
        let p = LossProblem(seed: 77)
        for level in [ImportanceSamplingLevel.token, .sequence] {
            for bias in [false, true] {
                let base = makeConfig(.dapo, level, beta: 0.04, bias: bias)
                var clamped = base
                clamped.klClamp = 1e300
                let a = try lossRun(p, base), b = try lossRun(p, clamped)
                #expect(a.loss.bitPattern == b.loss.bitPattern && a.grad == b.grad && sameBits(a.metrics, b.metrics))
            }
        }
    }
}

@Suite struct GMPOTests {
    /// A hand-worked two-row example (epsilon 0.4 in log space, as TRL's GMPOConfig).
    @Test func handWorkedExample() throws {
        var p = LossProblem(B: 3, T: 3, seed: 1)
        p.mask = [1, 1, 1, 1, 1, 1, 0, 0, 0]  // row 2 fully masked
        p.adv = [1, -1, 0.7]
        let lr = [0.1, 0.5, -0.6, 0.5, -0.5, 0, 0, 0, 0]
        p.old = zip(p.lp, lr).map { $0 - $1 }
        var cfg = LossConfig(lossType: .gmpo)
        cfg.epsilon = 0.4
        let r = try lossRun(p, cfg)
        // Row 0 (A > 0): z = min(lr, clamp) = [0.1, 0.4, -0.6]; row 1 (A < 0): max = [0.5, -0.4, 0].
        let c0 = Double.exp((0.1 + 0.4 - 0.6) / 3), c1 = Double.exp((0.5 - 0.4 + 0) / 3)
        #expect(abs(r.loss - (-c0 * 1 + c1 * 1) / 3) < 1e-14)  // mean over B = 3 rows; row 2 adds 0
        let g0 = -c0 / 3 / 3, g1 = c1 / 3 / 3
        let expected = [g0, 0, g0, g1, 0, g1, 0, 0, 0]
        for k in 0..<9 { #expect(abs(r.grad[k] - expected[k]) < 1e-14, "token \(k)") }
        let m = r.metrics
        #expect(m.clipRatioLowMean == 1.0 / 6 && m.clipRatioHighMean == 1.0 / 6 && m.clipRatioRegionMean == 2.0 / 6)
        #expect(m.clipRatioLowMin == 0 && abs(m.clipRatioHighMax - 1.0 / 3) < 1e-16)
        #expect(m.pgClipfracLower.isNaN && m.cispoClipRatio.isNaN)
    }

    /// A log-ratio exactly on a bound (epsilon = 3/8 and log-probs chosen so lp - old is exact):
    /// torch.clamp passes no gradient there and the min/max tie splits it: half the gradient.
    @Test func logRatioOnBoundGetsHalfGradient() throws {
        var p = LossProblem(B: 2, T: 2, seed: 1)
        p.mask = [1, 1, 1, 1]
        p.adv = [1, -1]
        p.lp = [-1, -1, -1.375, -1]
        p.old = [-1.375, -1.25, -1, -1.25]  // log-ratios 0.375 (upper bound), 0.25, -0.375 (lower), 0.25
        var cfg = LossConfig(lossType: .gmpo)
        cfg.epsilon = 0.375
        let r = try lossRun(p, cfg)
        let c0 = Double.exp((0.375 + 0.25) / 2), c1 = Double.exp((-0.375 + 0.25) / 2)
        #expect(abs(r.grad[0] - (-c0 / 2 / 2 * 0.5)) < 1e-15 && abs(r.grad[1] - (-c0 / 2 / 2)) < 1e-15)
        #expect(abs(r.grad[2] - (c1 / 2 / 2 * 0.5)) < 1e-15 && abs(r.grad[3] - (c1 / 2 / 2)) < 1e-15)
        // On the bound is not beyond it: not counted as clipped.
        #expect(r.metrics.clipRatioRegionMean == 0)
    }

    /// d loss / d lp against central differences: beta 0 and 0.3, with the high-entropy mask
    /// (inside the geometric mean), every KL estimator without straight-through.
    @Test func finiteDifferenceGradient() throws {
        for (q, beta, est) in [(1.0, 0.0, KLEstimator.k3), (0.5, 0.0, .k3), (1.0, 0.3, .k3), (0.6, 0.3, .k2),
                               (1.0, 0.3, .k1), (1.0, 0.3, .abs)] {
            for seed: UInt64 in [3, 4] {
                let p = LossProblem(seed: seed, spread: 0.6)
                var cfg = gmpoConfig(beta: beta, quantile: q)
                cfg.klEstimator = est
                cfg.gradientAccumulationSteps = 2
                let res = try lossRun(p, cfg)
                var expected = [Double](repeating: 0, count: p.B * p.T)
                for k in 0..<(p.B * p.T) where p.mask[k] != 0 {
                    expected[k] = try centralDifference(p.lp, k) { x in try lossRun(p, cfg, lp: x).loss }
                }
                expectGradient(res.grad, expected, p.mask, "gmpo q=\(q) beta=\(beta) \(est)")
            }
        }
    }

    /// Loss and gradient are TRL's formula evaluated independently here (float64), including
    /// the entropy mask inside the geometric mean and the KL's own sequence mean.
    @Test func matchesFormula() throws {
        let p = LossProblem(B: 6, T: 11, seed: 12, spread: 0.7)
        let cfg = gmpoConfig(beta: 0.2, quantile: 0.55)
        let r = try lossRun(p, cfg)
        // The entropy threshold as the kernel computes it (torch.quantile of valid entropies).
        var valid = [Float]()
        for k in 0..<(p.B * p.T) where p.mask[k] != 0 { valid.append(Float(p.ent[k])) }
        let thr = Double(PolicyLoss.torchQuantile(&valid, Float(1 - 0.55))!)
        var loss = 0.0
        for i in 0..<p.B {
            var s = 0.0, e = 0.0, kl = 0.0, L = 0.0
            for t in 0..<p.T where p.mask[i * p.T + t] != 0 {
                let k = i * p.T + t
                let lr = p.lp[k] - p.old[k]
                let c = min(max(lr, -cfg.epsilon), cfg.epsilonHigh!)
                let z = p.adv[i] > 0 ? min(lr, c) : max(lr, c)
                if p.ent[k] >= thr { s += z; e += 1 }
                let d = p.ref[k] - p.lp[k]
                kl += Double.exp(d) - d - 1
                L += 1
            }
            if L > 0 { loss += -Double.exp(s / max(e, 1)) * p.adv[i] + 0.2 * kl / L }
        }
        loss /= Double(p.B)
        #expect(abs(r.loss - loss) < 1e-14, "\(r.loss) vs \(loss)")
    }
}

@Suite struct SequenceTokenTests {
    /// GSPO-token: r_it = sg(s_i) exp(lp_t - sg(lp_t)). Holding the stop-gradient parts fixed
    /// is a token-level run whose old log-probs are lp - log s_i (fixed while lp moves): its
    /// value equals ours and its finite differences are the GSPO-token gradient.
    @Test(arguments: [LossType.grpo, .bnpo, .drGRPO, .dapo, .luspo, .cispo, .sapo])
    func finiteDifferenceGradient(_ type: LossType) throws {
        for (beta, bias, delta, dual) in [(0.0, false, nil, nil), (0.04, false, 1.3, nil), (0.04, true, nil, 2.0)]
            as [(Double, Bool, Double?, Double?)] {
            if dual != nil && !type.isClipped { continue }
            let p = LossProblem(seed: 40 + UInt64(type.rawValue), spread: 0.5)
            var cfg = makeConfig(type, .sequenceToken, beta: beta, bias: bias)
            if type.isClipped { cfg.delta = delta; cfg.clipRatioC = dual }
            var tok = cfg
            tok.importanceSamplingLevel = .token
            let logS = sequenceLogRatios(p)
            var shiftedOld = p.lp
            for k in 0..<(p.B * p.T) { shiftedOld[k] = p.lp[k] - logS[k / p.T] }
            let res = try lossRun(p, cfg)
            let ref = try lossRun(p, tok, old: .some(shiftedOld))
            #expect(abs(res.loss - ref.loss) < 1e-12, "\(type) value")
            var expected = [Double](repeating: 0, count: p.B * p.T)
            for k in 0..<(p.B * p.T) where p.mask[k] != 0 {
                if type != .cispo {
                    expected[k] = try centralDifference(p.lp, k) { x in try lossRun(p, tok, lp: x, old: .some(shiftedOld)).loss }
                    continue
                }
                // cispo detaches its ratio in the policy term: the direct derivative with the ratio
                // held fixed, plus the bias-corrected KL's dependence on the ratio alone.
                let direct = try centralDifference(p.lp, k) { x in
                    var o = shiftedOld
                    o[k] += x[k] - p.lp[k]
                    return try lossRun(p, tok, lp: x, old: .some(o)).loss
                }
                let zeroA = [Double](repeating: 0, count: p.adv.count)
                let viaRatio = try centralDifference(shiftedOld, k) { o in try lossRun(p, tok, old: .some(o), adv: zeroA).loss }
                expected[k] = direct - viaRatio
            }
            expectGradient(res.grad, expected, p.mask, "\(type) sequence_token beta=\(beta) bias=\(bias)")
            // Metrics are per token (TRL's (B, T) shapes): the token run's.
            #expect(sameCounts(res.metrics, ref.metrics), "\(type) metrics")
        }
    }

    /// With one advantage per row the value equals GSPO's (sequence level); the gradient differs
    /// only by where it lands: GSPO spreads d l / d s_i over the row, GSPO-token gives each token
    /// its own term. Summed over a row they agree (no KL).
    @Test func rowSumsMatchSequenceLevel() throws {
        let p = LossProblem(seed: 8, spread: 0.4)
        for type in [LossType.grpo, .dapo, .sapo] {
            let seq = try lossRun(p, makeConfig(type, .sequence))
            let st = try lossRun(p, makeConfig(type, .sequenceToken))
            #expect(abs(seq.loss - st.loss) < 1e-14)
            for i in 0..<p.B {
                let a = (0..<p.T).map { seq.grad[i * p.T + $0] }.reduce(0, +)
                let b = (0..<p.T).map { st.grad[i * p.T + $0] }.reduce(0, +)
                #expect(abs(a - b) < 1e-14, "\(type) row \(i)")
            }
        }
    }
}

@Suite struct DualClipTests {
    /// Central differences, token and sequence level, with delta and bias-corrected KL.
    @Test(arguments: [LossType.grpo, .bnpo, .drGRPO, .dapo, .luspo])
    func finiteDifferenceGradient(_ type: LossType) throws {
        for level in [ImportanceSamplingLevel.token, .sequence] {
            for (c, delta, bias) in [(1.5, nil, false), (2.0, 4.0, true)] as [(Double, Double?, Bool)] {
                let p = LossProblem(seed: 70 + UInt64(type.rawValue), spread: 1.2)
                var cfg = makeConfig(type, level, beta: 0.04, bias: bias)
                cfg.clipRatioC = c
                cfg.delta = delta
                let res = try lossRun(p, cfg)
                var expected = [Double](repeating: 0, count: p.B * p.T)
                for k in 0..<(p.B * p.T) where p.mask[k] != 0 {
                    expected[k] = try centralDifference(p.lp, k) { x in try lossRun(p, cfg, lp: x).loss }
                }
                expectGradient(res.grad, expected, p.mask, "\(type) \(level) c=\(c)")
                #expect(res.metrics.pgClipfracLower >= 0 && res.metrics.pgClipfracLower <= 1)
            }
        }
    }

    /// Boundaries by hand (A < 0): a ratio above c is capped (gradient 0, counted), a ratio
    /// exactly at c ties (half the gradient, not counted), below c nothing changes; A > 0 never.
    @Test func boundaries() throws {
        var p = LossProblem(B: 2, T: 4, seed: 2)
        p.mask = [UInt8](repeating: 1, count: 8)
        p.adv = [-0.5, 0.5]
        let lr = [Double.log(4), Double.log(2.5), 0.05, Double.log(3), Double.log(4), 0.05, -0.1, 0]
        p.old = zip(p.lp, lr).map { $0 - $1 }
        let c = Double.exp(p.lp[3] - p.old[3])  // the kernel's own ratio of token 3: an exact tie
        var cfg = makeConfig(.dapo, .token)
        cfg.clipRatioC = c
        let on = try lossRun(p, cfg)
        cfg.clipRatioC = nil
        let off = try lossRun(p, cfg)
        let ratio = zip(p.lp, p.old).map { Double.exp($0 - $1) }
        #expect(on.grad[0] == 0 && off.grad[0] != 0)                    // r = 4 > c: capped
        #expect(on.grad[1] == off.grad[1] && on.grad[2] == off.grad[2])  // below c
        #expect(on.grad[3] == off.grad[3] / 2)                           // r == c: tie
        for k in 4..<8 { #expect(on.grad[k] == off.grad[k]) }            // A > 0
        #expect(ratio[0] > c && ratio[1] < c)
        // pg_clipfrac_lower: one capped token of 8 (verl's masked mean over tokens).
        #expect(on.metrics.pgClipfracLower == 1.0 / 8)
        #expect(off.metrics.pgClipfracLower.isNaN)
        // The capped token's loss is -A c; the others are unchanged.
        let l0 = -p.adv[0] * c, lOff0 = -p.adv[0] * ratio[0]
        #expect(abs((on.loss - off.loss) * 8 - (l0 - lOff0)) < 1e-12)
    }
}

@Suite struct PolicyLossExtrasCommonTests {
    static let configs: [(String, LossConfig)] = {
        var out: [(String, LossConfig)] = []
        for est in KLEstimator.allCases {
            var c = makeConfig(.dapo, .token, beta: 0.04, bias: true)
            c.klEstimator = est
            c.klClamp = 0.1
            out.append(("kl \(est.name)", c))
        }
        var g = gmpoConfig(beta: 0.04, quantile: 0.5)
        g.entropyCoef = 0.1
        out.append(("gmpo", g))
        var st = makeConfig(.grpo, .sequenceToken, beta: 0.04, bias: true)
        st.entropyCoef = 0.1
        st.topEntropyQuantile = 0.5
        out.append(("sequence_token", st))
        var dc = makeConfig(.luspo, .sequence, beta: 0.04, bias: true)
        dc.clipRatioC = 1.5
        out.append(("dual clip seq", dc))
        var dt = makeConfig(.bnpo, .token, beta: 0.04)
        dt.clipRatioC = 1.2
        dt.offPolicyMaskThreshold = 0.01
        out.append(("dual clip token", dt))
        return out
    }()

    /// Bitwise identical results for 1 and 4 threads (float64 and float32).
    @Test(arguments: configs.map { $0.0 })
    func threadCountDoesNotChangeBits(_ name: String) throws {
        let cfg = try #require(Self.configs.first { $0.0 == name }).1
        let p = LossProblem(B: 301, T: 257, seed: 4321, spread: 0.8)
        func both() throws -> (PolicyLossResult<Double>, PolicyLossResult<Float>) {
            let d = try lossRun(p, cfg, useSamp: true)
            let f = try PolicyLoss.compute(
                batch: p.B, length: p.T, logps: p.lp.map { Float($0) }, advantages: p.adv.map { Float($0) },
                mask: p.mask, oldLogps: p.old.map { Float($0) }, refLogps: p.ref.map { Float($0) },
                samplingLogps: p.samp.map { Float($0) }, entropies: p.ent.map { Float($0) }, config: cfg)
            return (d, f)
        }
        try Parallel.setNumThreads(1)
        let one = try both()
        try Parallel.setNumThreads(4)
        let four = try both()
        try Parallel.setNumThreads(Parallel.defaultThreads())
        #expect(one.0.loss.bitPattern == four.0.loss.bitPattern && one.0.grad == four.0.grad)
        #expect(sameBits(one.0.metrics, four.0.metrics) && one.0.gradEntropies == four.0.gradEntropies)
        #expect(one.1.loss.bitPattern == four.1.loss.bitPattern && one.1.grad == four.1.grad)
        #expect(sameBits(one.1.metrics, four.1.metrics))
    }

    /// Masked positions holding NaN / inf change nothing.
    @Test(arguments: configs.map { $0.0 })
    func maskedGarbageIgnored(_ name: String) throws {
        let cfg = try #require(Self.configs.first { $0.0 == name }).1
        let p = LossProblem(seed: 99, spread: 0.8)
        let clean = try lossRun(p, cfg, useSamp: true)
        var dirty = p
        let bad: [Double] = [.nan, .infinity, -.infinity]
        for k in 0..<(p.B * p.T) where p.mask[k] == 0 {
            dirty.lp[k] = bad[k % 3]; dirty.old[k] = bad[(k + 1) % 3]; dirty.ref[k] = bad[(k + 2) % 3]
            dirty.samp[k] = bad[k % 3]; dirty.ent[k] = bad[(k + 1) % 3]
        }
        let r = try lossRun(dirty, cfg, useSamp: true)
        #expect(r.loss == clean.loss && r.loss.isFinite)
        #expect(r.grad == clean.grad && r.gradEntropies == clean.gradEntropies)
        #expect(sameBits(r.metrics, clean.metrics))
    }

    /// A fully masked batch gives loss 0 and gradient 0 (GMPO included: see the header's note
    /// on rows without tokens).
    @Test(arguments: configs.map { $0.0 })
    func fullyMaskedBatchIsZero(_ name: String) throws {
        let cfg = try #require(Self.configs.first { $0.0 == name }).1
        var p = LossProblem(seed: 5)
        p.mask = [UInt8](repeating: 0, count: p.B * p.T)
        let r = try lossRun(p, cfg, useSamp: true)
        #expect(r.loss == 0 && r.grad.allSatisfy { $0 == 0 })
        #expect(r.gradEntropies.map { $0.allSatisfy { $0 == 0 } } ?? true)
        #expect(!r.metrics.allValues.contains { $0.isInfinite })
    }

    /// Micro-batches with gradient accumulation add up to the full batch (uneven lengths).
    @Test(arguments: configs.map { $0.0 })
    func gradientAccumulationMatchesFullBatch(_ name: String) throws {
        var full = try #require(Self.configs.first { $0.0 == name }).1
        // bnpo, the entropy quantile and the entropy bonus normalise per micro-batch (as TRL).
        guard full.lossType != .bnpo else { return }
        full.topEntropyQuantile = 1
        full.entropyCoef = 0
        var p = LossProblem(B: 6, T: 10, seed: 77, spread: 0.8)
        p.mask = [UInt8](repeating: 0, count: 60)
        let lens = [2, 9, 7, 4, 10, 1]
        for i in 0..<6 { for t in 0..<lens[i] { p.mask[i * 10 + t] = 1 } }
        full.numItemsInBatch = 33
        let whole = try lossRun(p, full)
        var micro = full
        micro.gradientAccumulationSteps = 3
        micro.stepsPerGeneration = 3
        var loss = 0.0, grad = [Double]()
        for mb in 0..<3 {
            var q = p
            q.B = 2
            let sl = (mb * 20)..<(mb * 20 + 20)
            q.lp = Array(p.lp[sl]); q.old = Array(p.old[sl]); q.ref = Array(p.ref[sl])
            q.ent = Array(p.ent[sl]); q.samp = Array(p.samp[sl]); q.mask = Array(p.mask[sl])
            q.adv = Array(p.adv[(mb * 2)..<(mb * 2 + 2)])
            let r = try lossRun(q, micro)
            loss += r.loss
            grad += r.grad
        }
        #expect(abs(loss - whole.loss) < 1e-14, "\(name)")
        for k in 0..<60 { #expect(abs(grad[k] - whole.grad[k]) < 1e-15, "\(name) \(k)") }
    }

    @Test func errors() throws {
        let p = LossProblem(seed: 2)
        func fails(_ change: (inout LossConfig) -> Void, adv: [Double]? = nil, isr: [Double]? = nil,
                   _ line: Int = #line) {
            var cfg = gmpoConfig()
            change(&cfg)
            #expect(throws: GRPOError.self, "line \(line)") { try lossRun(p, cfg, adv: adv, isr: isr) }
        }
        fails { $0.importanceSamplingLevel = .sequence }
        fails { $0.importanceSamplingLevel = .sequenceToken }
        fails { $0.delta = 2 }
        fails { $0.useBiasCorrectionKL = true; $0.beta = 0.1 }
        fails { $0.offPolicyMaskThreshold = 0.1 }
        fails({ _ in }, adv: [Double](repeating: 0.5, count: p.B * p.T))
        fails({ _ in }, isr: [Double](repeating: 1, count: p.B))
        fails { $0.lossType = .cispo; $0.clipRatioC = 3 }
        fails { $0.lossType = .dapo; $0.clipRatioC = 1 }
        fails { $0.lossType = .dapo; $0.clipRatioC = .nan }
        fails { $0.lossType = .dapo; $0.klClamp = 0 }
        fails { $0.lossType = .dapo; $0.klClamp = .infinity }
        fails { $0.lossType = .dapo; $0.klClamp = -.nan }
        // Valid neighbours run.
        var ok = gmpoConfig(beta: 0.1)
        ok.klEstimator = .absPlus
        ok.klClamp = 2
        #expect(try lossRun(p, ok).loss.isFinite)
    }

    /// The C ABI: a zero-filled tail is TRL's behaviour; the new fields are read and checked.
    @Test func cABI() throws {
        let p = LossProblem(seed: 9)
        var cfg = grpo_loss_config()
        cfg.loss_type = 0; cfg.epsilon = 0.2; cfg.epsilon_high = 0.28; cfg.beta = 0.04
        cfg.top_entropy_quantile = 1; cfg.sapo_temperature_pos = 1; cfg.sapo_temperature_neg = 1.05
        cfg.vespo_k_pos = 2; cfg.vespo_lambda_pos = 3; cfg.vespo_k_neg = 3; cfg.vespo_lambda_neg = 2
        cfg.num_items_in_batch = -1; cfg.num_processes = 1; cfg.gradient_accumulation_steps = 1
        var metrics = grpo_loss_metrics()
        var grad = [Double](repeating: 0, count: p.B * p.T)
        func call() -> grpo_status {
            p.lp.withUnsafeBytes { lp in p.old.withUnsafeBytes { old in p.ref.withUnsafeBytes { rf in
            p.adv.withUnsafeBytes { adv in p.mask.withUnsafeBufferPointer { m in
                var inp = grpo_loss_inputs()
                inp.batch = p.B; inp.length = p.T; inp.dtype = 1; inp.aux_dtype = 1
                inp.logps = lp.baseAddress; inp.old_logps = old.baseAddress; inp.ref_logps = rf.baseAddress
                inp.advantages = adv.baseAddress; inp.advantages_cols = 1; inp.mask = m.baseAddress
                return grpo_policy_loss(&inp, &cfg, &grad, nil, &metrics, nil, 0)
            }}}}}
        }
        #expect(call() == GRPO_OK)
        let swiftDefault = try lossRun(p, makeConfig(.grpo, .token, beta: 0.04))
        #expect(metrics.loss == swiftDefault.loss && grad == swiftDefault.grad && metrics.pg_clipfrac_lower.isNaN)
        cfg.kl_estimator = Int32(GRPO_KL_K1_PLUS.rawValue)
        cfg.use_kl_clamp = 1; cfg.kl_clamp = 0.2
        cfg.use_clip_ratio_c = 1; cfg.clip_ratio_c = 2.5
        #expect(call() == GRPO_OK)
        var sw = makeConfig(.grpo, .token, beta: 0.04)
        sw.klEstimator = .k1Plus; sw.klClamp = 0.2; sw.clipRatioC = 2.5
        let swift = try lossRun(p, sw)
        #expect(metrics.loss == swift.loss && grad == swift.grad && metrics.pg_clipfrac_lower == swift.metrics.pgClipfracLower)
        cfg.kl_estimator = 7
        #expect(call() == GRPO_ERR_VALUE)
        cfg.kl_estimator = 0; cfg.use_kl_clamp = 2
        #expect(call() == GRPO_ERR_VALUE)
        cfg.use_kl_clamp = 0; cfg.use_clip_ratio_c = 1; cfg.clip_ratio_c = 0.5
        #expect(call() == GRPO_ERR_VALUE)
        cfg.use_clip_ratio_c = 0
        cfg.loss_type = Int32(GRPO_LOSS_GMPO.rawValue); cfg.beta = 0
        #expect(call() == GRPO_OK)
        var g = LossConfig(lossType: .gmpo)
        g.epsilonHigh = 0.28
        let gmpo = try lossRun(p, g)
        #expect(metrics.loss == gmpo.loss && grad == gmpo.grad)
        cfg.importance_sampling_level = Int32(GRPO_IS_SEQUENCE_TOKEN.rawValue)
        #expect(call() == GRPO_ERR_VALUE)  // gmpo is token level only
        cfg.loss_type = 3
        #expect(call() == GRPO_OK)
        cfg.importance_sampling_level = 3
        #expect(call() == GRPO_ERR_VALUE)
    }
}
