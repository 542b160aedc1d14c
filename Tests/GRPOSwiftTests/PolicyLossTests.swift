import Testing
@testable import GRPOSwift
import CGRPOBridge

/// A random (B,T) problem in Double: scattered mask with a fully masked row and uneven
/// lengths, mixed-sign advantages, log-ratios spread around the clip range.
struct LossProblem {
    var B: Int, T: Int
    var lp: [Double], old: [Double], ref: [Double], samp: [Double], ent: [Double]
    var adv: [Double], mask: [UInt8], isr: [Double]

    init(B: Int = 5, T: Int = 9, seed: UInt64, spread: Double = 0.35, advPerToken: Bool = false) {
        self.B = B; self.T = T
        var rng = SplitMix(seed: seed)
        let n = B * T
        lp = (0..<n).map { _ in -rng.uniform(0.05, 3) }
        old = lp.map { $0 - rng.uniform(-spread, spread) }
        ref = lp.map { $0 + rng.uniform(-0.5, 0.5) }
        samp = old.map { $0 + rng.uniform(-0.2, 0.2) }
        ent = (0..<n).map { _ in rng.uniform(0, 3) }
        adv = (0..<(advPerToken ? n : B)).map { _ in rng.uniform(-1.5, 1.5) }
        isr = (0..<n).map { _ in rng.uniform(0.5, 1.5) }
        mask = [UInt8](repeating: 0, count: n)
        for i in 0..<B {
            // Row 1 fully masked; other rows: a prefix of random length with scattered holes.
            if i == 1 { continue }
            let len = 2 + Int(rng.next() % UInt64(T - 1))
            for t in 0..<len where rng.nextDouble() > 0.15 { mask[i * T + t] = 1 }
            mask[i * T] = 1
        }
    }
}

func lossRun(_ p: LossProblem, _ cfg: LossConfig, lp: [Double]? = nil, old: [Double]?? = .none,
             adv: [Double]? = nil, ent: [Double]? = nil, useRef: Bool = true, useSamp: Bool = false,
             isr: [Double]? = nil, grad: Bool = true) throws(GRPOError) -> PolicyLossResult<Double> {
    let oldArg: [Double]? = old ?? p.old
    return try PolicyLoss.compute(
        batch: p.B, length: p.T, logps: lp ?? p.lp, advantages: adv ?? p.adv, mask: p.mask,
        oldLogps: oldArg, refLogps: useRef ? p.ref : nil, samplingLogps: useSamp ? p.samp : nil,
        entropies: ent ?? p.ent, importanceSamplingRatio: isr, config: cfg, computeGrad: grad)
}

func makeConfig(_ type: LossType, _ level: ImportanceSamplingLevel, beta: Double = 0,
                bias: Bool = false) -> LossConfig {
    var c = LossConfig(lossType: type, importanceSamplingLevel: level)
    c.beta = beta
    c.useBiasCorrectionKL = bias && type != .gmpo  // gmpo has no bias-corrected KL (refused)
    c.maxCompletionLength = 16
    c.epsilonHigh = type == .cispo ? 1.1 : 0.28
    return c
}

/// Loss type / level pairs the kernel accepts (gmpo is token level only).
func supported(_ type: LossType, _ level: ImportanceSamplingLevel) -> Bool { type != .gmpo || level == .token }

/// Token counts and clip/cispo ratios agree exactly; phi and kl to float precision.
func sameCounts(_ a: PolicyLossMetrics, _ b: PolicyLossMetrics) -> Bool {
    let exact: [(Double, Double)] = [
        (a.clipRatioLowMean, b.clipRatioLowMean), (a.clipRatioHighMean, b.clipRatioHighMean),
        (a.clipRatioRegionMean, b.clipRatioRegionMean), (a.cispoClipRatio, b.cispoClipRatio),
        (a.numTokens, b.numTokens), (a.numOffPolicyDropped, b.numOffPolicyDropped)]
    let close = abs(a.vespoPhiSeqMean - b.vespoPhiSeqMean) < 1e-5 || (a.vespoPhiSeqMean.isNaN && b.vespoPhiSeqMean.isNaN)
    return close && exact.allSatisfy { $0.0 == $0.1 || ($0.0.isNaN && $0.1.isNaN) }
}

func sameBits(_ a: PolicyLossMetrics, _ b: PolicyLossMetrics) -> Bool {
    a.allValues.map(\.bitPattern) == b.allValues.map(\.bitPattern)
}

/// Central finite difference of `f` in coordinate k.
func centralDifference(_ x: [Double], _ k: Int, h: Double = 1e-6, _ f: ([Double]) throws -> Double) rethrows -> Double {
    var xp = x, xm = x
    xp[k] += h; xm[k] -= h
    return (try f(xp) - f(xm)) / (2 * h)
}

@Suite struct PolicyLossTests {
    static let gradCases: [(LossType, ImportanceSamplingLevel, Double, Bool)] = {
        var cases: [(LossType, ImportanceSamplingLevel, Double, Bool)] = []
        // sequence_token's gradient is not the derivative of its value (stop-gradients):
        // PolicyLossExtrasTests checks it with the stop-gradient parts held fixed.
        for t in LossType.allCases {
            for l in ImportanceSamplingLevel.allCases where supported(t, l) && l != .sequenceToken {
                cases.append((t, l, 0, false))
                cases.append((t, l, 0.04, false))
                cases.append((t, l, 0.04, true))
            }
        }
        return cases
    }()

    /// d loss / d logps against central differences. cispo and vespo detach their ratio
    /// factor: their policy term is differentiated with the ratio held fixed (logps and
    /// old_logps moved together), and the KL term's dependence on the ratio (bias-corrected
    /// KL) is added from a run with zero advantages (old_logps moved the other way).
    @Test(arguments: gradCases)
    func finiteDifferenceGradient(_ c: (LossType, ImportanceSamplingLevel, Double, Bool)) throws {
        let (type, level, beta, bias) = c
        for seed: UInt64 in [11, 12] {
            for perToken in [false, true] where !(perToken && type == .gmpo) {
                let p = LossProblem(seed: seed &* 31 &+ UInt64(type.rawValue), advPerToken: perToken)
                var cfg = makeConfig(type, level, beta: beta, bias: bias)
                if seed == 12 && type.isClipped { cfg.delta = 1.25 }
                let res = try lossRun(p, cfg)
                let detached = type == .cispo || type == .vespo
                for k in 0..<(p.B * p.T) where p.mask[k] != 0 {
                    let expected: Double
                    if !detached {
                        expected = try centralDifference(p.lp, k) { x in try lossRun(p, cfg, lp: x).loss }
                    } else {
                        let direct = try centralDifference(p.lp, k) { x in
                            var o = p.old
                            o[k] += x[k] - p.lp[k]
                            return try lossRun(p, cfg, lp: x, old: o).loss
                        }
                        let zeroA = [Double](repeating: 0, count: p.adv.count)
                        let viaRatio = try centralDifference(p.old, k) { o in
                            try lossRun(p, cfg, old: o, adv: zeroA).loss
                        }
                        expected = direct - viaRatio
                    }
                    #expect(abs(res.grad[k] - expected) <= 1e-7 + 1e-6 * abs(expected),
                            "\(type) \(level) beta=\(beta) bias=\(bias) token \(k): \(res.grad[k]) vs \(expected)")
                }
                for k in 0..<(p.B * p.T) where p.mask[k] == 0 { #expect(res.grad[k] == 0) }
            }
        }
    }

    /// On-policy (old_logps absent) the ratio is 1 with gradient: same as old = copy of logps.
    @Test(arguments: LossType.allCases)
    func onPolicyEqualsCopiedOld(_ type: LossType) throws {
        for level in ImportanceSamplingLevel.allCases where supported(type, level) {
            let p = LossProblem(seed: 5)
            let cfg = makeConfig(type, level, beta: 0.04, bias: true)
            let a = try lossRun(p, cfg, old: .some(nil))
            let b = try lossRun(p, cfg, old: .some(p.lp))
            #expect(a.loss == b.loss)
            #expect(a.grad == b.grad)
        }
    }

    @Test func entropyBonusGradient() throws {
        for q in [1.0, 0.4] {
            let p = LossProblem(seed: 21)
            var cfg = makeConfig(.grpo, .token, beta: 0.04)
            cfg.entropyCoef = 0.3
            cfg.topEntropyQuantile = q
            cfg.gradientAccumulationSteps = 2
            let res = try lossRun(p, cfg)
            let gh = try #require(res.gradEntropies)
            for k in 0..<(p.B * p.T) where p.mask[k] != 0 {
                // The loss is linear in an entropy away from the high-entropy threshold.
                let fd = try centralDifference(p.ent, k, h: 1e-7) { e in try lossRun(p, cfg, ent: e).loss }
                #expect(abs(gh[k] - fd) < 1e-8, "q=\(q) token \(k): \(gh[k]) vs \(fd)")
            }
            #expect(res.metrics.entropyTerm < 0)
            // The logps gradient is unaffected by the bonus itself.
            var noBonus = cfg
            noBonus.entropyCoef = 0
            #expect(try lossRun(p, noBonus).grad == res.grad)
        }
    }

    /// At ratio 1 and beta 0, grpo's loss is exactly 0 for centred advantages while its
    /// gradient is the REINFORCE gradient -A_i / (L_i B).
    @Test func grpoAtRatioOneIsZeroWithReinforceGradient() throws {
        var p = LossProblem(B: 4, T: 8, seed: 3)
        p.adv = [1, -1, 0.5, -0.5]
        p.mask = [UInt8](repeating: 0, count: 32)
        let lens = [3, 5, 8, 2]
        for i in 0..<4 { for t in 0..<lens[i] { p.mask[i * 8 + t] = 1 } }
        let res = try lossRun(p, makeConfig(.grpo, .token), old: .some(nil))
        #expect(res.loss == 0)
        for i in 0..<4 {
            for t in 0..<lens[i] {
                #expect(abs(res.grad[i * 8 + t] - (-p.adv[i] / Double(lens[i] * 4))) < 1e-16)
            }
        }
        // Token-normalised types: -sum A_i L_i / normaliser.
        let sumAL = zip(p.adv, lens).map { $0 * Double($1) }.reduce(0, +)
        var cfg = makeConfig(.dapo, .token)
        cfg.numItemsInBatch = 40; cfg.numProcesses = 2; cfg.gradientAccumulationSteps = 4
        cfg.stepsPerGeneration = 2
        #expect(abs(try lossRun(p, cfg, old: .some(nil)).loss - (-sumAL / (40.0 / 2 * 4 / 2))) < 1e-15)
        #expect(abs(try lossRun(p, makeConfig(.bnpo, .token), old: .some(nil)).loss - (-sumAL / 18)) < 1e-15)
        #expect(abs(try lossRun(p, makeConfig(.drGRPO, .token), old: .some(nil)).loss - (-sumAL / (4 * 16))) < 1e-15)
        // Its metrics say why: policy and KL terms are both 0.
        let m = try lossRun(p, makeConfig(.grpo, .token, beta: 0.04), lp: p.ref, old: .some(nil)).metrics
        #expect(m.policyTerm == 0 && m.klTerm == 0 && m.kl == 0)
    }

    /// A ratio exactly on a clip boundary: torch.clamp passes no gradient at its bounds and
    /// torch.min splits a tie, so the token gets half the unclipped gradient.
    @Test func ratioOnClipBoundaryGetsHalfGradient() throws {
        var p = LossProblem(B: 2, T: 3, seed: 3)
        p.adv = [0.75, -0.5]
        p.mask = [1, 1, 1, 1, 1, 0]
        var cfg = makeConfig(.grpo, .token)
        cfg.epsilon = 0; cfg.epsilonHigh = 0  // ratio 1 sits on both bounds
        let r = try lossRun(p, cfg, old: .some(p.lp))
        for t in 0..<3 { #expect(r.grad[t] == -0.75 / 6 / 2) }
        for t in 3..<5 { #expect(r.grad[t] == 0.5 / 4 / 2) }
        cfg.epsilon = 0.2; cfg.epsilonHigh = 0.2; cfg.delta = 1  // ratio 1 on the delta cap
        let d = try lossRun(p, cfg, old: .some(p.lp))
        for t in 0..<3 { #expect(d.grad[t] == -0.75 / 6 / 2) }
    }

    /// A positive advantage pushes its log-prob up (negative gradient of the loss).
    @Test(arguments: LossType.allCases)
    func gradientSign(_ type: LossType) throws {
        for level in ImportanceSamplingLevel.allCases where supported(type, level) {
            var p = LossProblem(B: 2, T: 4, seed: 8, spread: 0.05)
            p.adv = [1, -1]
            p.mask = [UInt8](repeating: 1, count: 8)
            let res = try lossRun(p, makeConfig(type, level))
            for t in 0..<4 {
                #expect(res.grad[t] < 0, "\(type) \(level)")
                #expect(res.grad[4 + t] > 0, "\(type) \(level)")
            }
        }
    }

    /// Masked positions are ignored even when they hold NaN / inf.
    @Test(arguments: LossType.allCases)
    func maskedNonFiniteIgnored(_ type: LossType) throws {
        for level in ImportanceSamplingLevel.allCases where supported(type, level) {
            let p = LossProblem(seed: 99)
            var cfg = makeConfig(type, level, beta: 0.04, bias: true)
            cfg.offPolicyMaskThreshold = type == .gmpo ? nil : 0.05  // gmpo refuses both
            cfg.topEntropyQuantile = 0.5
            cfg.entropyCoef = 0.1
            let isr0: [Double]? = type == .gmpo ? nil : p.isr
            let clean = try lossRun(p, cfg, useSamp: true, isr: isr0)
            var dirty = p
            let bad: [Double] = [.nan, .infinity, -.infinity]
            for k in 0..<(p.B * p.T) where p.mask[k] == 0 {
                dirty.lp[k] = bad[k % 3]; dirty.old[k] = bad[(k + 1) % 3]; dirty.ref[k] = bad[(k + 2) % 3]
                dirty.samp[k] = bad[k % 3]; dirty.ent[k] = bad[(k + 1) % 3]
            }
            var isr = p.isr
            for k in 0..<(p.B * p.T) where p.mask[k] == 0 { isr[k] = bad[k % 3] }
            let r = try lossRun(dirty, cfg, useSamp: true, isr: type == .gmpo ? nil : isr)
            #expect(r.loss == clean.loss)
            #expect(r.grad == clean.grad)
            #expect(r.gradEntropies == clean.gradEntropies)
            #expect(sameBits(r.metrics, clean.metrics))
            #expect(r.loss.isFinite)
        }
    }

    @Test(arguments: LossType.allCases)
    func fullyMaskedBatchIsZero(_ type: LossType) throws {
        for level in ImportanceSamplingLevel.allCases where supported(type, level) {
            var p = LossProblem(seed: 4)
            p.mask = [UInt8](repeating: 0, count: p.B * p.T)
            var cfg = makeConfig(type, level, beta: 0.04, bias: true)
            cfg.entropyCoef = 0.2
            let r = try lossRun(p, cfg)
            #expect(r.loss == 0)
            #expect(r.grad.allSatisfy { $0 == 0 })
            #expect(r.gradEntropies?.allSatisfy { $0 == 0 } == true)
        }
    }

    /// |logps - ref| = 50: exp(50) is finite in float32 and float64, so loss and gradient are.
    @Test func largeKLGapStaysFinite() throws {
        for sign in [1.0, -1.0] {
            var p = LossProblem(seed: 6)
            p.ref = p.lp.map { $0 + 50 * sign }
            for type in LossType.allCases {
                let r = try lossRun(p, makeConfig(type, .token, beta: 0.04, bias: true))
                #expect(r.loss.isFinite && r.grad.allSatisfy { $0.isFinite }, "\(type)")
                let f = try PolicyLoss.compute(
                    batch: p.B, length: p.T, logps: p.lp.map { Float($0) }, advantages: p.adv.map { Float($0) },
                    mask: p.mask, oldLogps: p.old.map { Float($0) }, refLogps: p.ref.map { Float($0) },
                    config: makeConfig(type, .token, beta: 0.04))
                #expect(f.loss.isFinite && f.grad.allSatisfy { $0.isFinite }, "\(type) f32")
            }
        }
    }

    /// Micro-batches with GA steps accumulate to the full-batch loss and gradient
    /// (uneven row lengths). bnpo normalises by each micro-batch's own token count (as TRL
    /// does), so its micro-batches are given equal token totals.
    @Test(arguments: LossType.allCases)
    func gradientAccumulationMatchesFullBatch(_ type: LossType) throws {
        let ga = 3
        var p = LossProblem(B: 6, T: 10, seed: 77)
        p.mask = [UInt8](repeating: 0, count: 60)
        let lens = [2, 9, 7, 4, 10, 1]  // micro-batch token totals 11, 11, 11
        for i in 0..<6 { for t in 0..<lens[i] { p.mask[i * 10 + t] = 1 } }
        for level in ImportanceSamplingLevel.allCases where supported(type, level) {
            var full = makeConfig(type, level, beta: 0.04, bias: true)
            full.numItemsInBatch = 33
            let whole = try lossRun(p, full)
            var micro = full
            micro.gradientAccumulationSteps = ga
            micro.stepsPerGeneration = ga
            var loss = 0.0
            var grad = [Double]()
            for mb in 0..<ga {
                let rows = (mb * 2)..<(mb * 2 + 2)
                var q = p
                q.B = 2
                let sl = (rows.lowerBound * 10)..<(rows.upperBound * 10)
                q.lp = Array(p.lp[sl]); q.old = Array(p.old[sl]); q.ref = Array(p.ref[sl])
                q.ent = Array(p.ent[sl]); q.mask = Array(p.mask[sl]); q.adv = Array(p.adv[rows])
                let r = try lossRun(q, micro)
                loss += r.loss
                grad += r.grad
            }
            #expect(abs(loss - whole.loss) < 1e-14, "\(type) \(level)")
            for k in 0..<60 { #expect(abs(grad[k] - whole.grad[k]) < 1e-15, "\(type) \(level) \(k)") }
        }
    }

    @Test func threadCountDoesNotChangeBits() throws {
        let p = LossProblem(B: 301, T: 257, seed: 1234)
        for level in ImportanceSamplingLevel.allCases {  // dapo: every level
            var cfg = makeConfig(.dapo, level, beta: 0.04, bias: true)
            cfg.topEntropyQuantile = 0.3
            cfg.entropyCoef = 0.01
            try Parallel.setNumThreads(1)
            let one = try lossRun(p, cfg)
            try Parallel.setNumThreads(4)
            let four = try lossRun(p, cfg)
            try Parallel.setNumThreads(Parallel.defaultThreads())
            #expect(one.loss.bitPattern == four.loss.bitPattern)
            #expect(one.grad == four.grad && sameBits(one.metrics, four.metrics))
        }
    }

    /// A caller-given high-entropy threshold (multi-process: the quantile over every process)
    /// replaces the kernel's own quantile: the same threshold gives the same bits; two halves of
    /// a batch given the threshold of the whole batch, W = 2 and the global N, average to the
    /// whole batch's gradient (what a data-parallel all-reduce computes); NaN selects no token.
    @Test func externalEntropyThreshold() throws {
        let p = LossProblem(B: 6, T: 9, seed: 31)
        for level in ImportanceSamplingLevel.allCases {
            var cfg = makeConfig(.dapo, level, beta: 0.04)
            cfg.topEntropyQuantile = 0.4
            var valid = [Float]()
            for k in 0..<(p.B * p.T) where p.mask[k] != 0 { valid.append(Float(p.ent[k])) }
            let q = try #require(PolicyLoss.torchQuantile(&valid, Float(1 - cfg.topEntropyQuantile)))
            let own = try lossRun(p, cfg)
            var given = cfg
            given.entropyThreshold = Double(q)
            let ext = try lossRun(p, given)
            #expect(own.loss.bitPattern == ext.loss.bitPattern && own.grad == ext.grad)
            #expect(sameBits(own.metrics, ext.metrics))

            given.numItemsInBatch = own.metrics.numTokens
            given.numProcesses = 2
            var grad = [Double](), effTokens = 0.0
            for half in 0..<2 {
                let rows = (half * 3)..<(half * 3 + 3)
                let sl = (rows.lowerBound * p.T)..<(rows.upperBound * p.T)
                var h = p
                h.B = 3
                h.lp = Array(p.lp[sl]); h.old = Array(p.old[sl]); h.ref = Array(p.ref[sl])
                h.ent = Array(p.ent[sl]); h.mask = Array(p.mask[sl]); h.adv = Array(p.adv[rows])
                let r = try lossRun(h, given)
                grad += r.grad.map { $0 / 2 }  // the all-reduce average over W = 2
                effTokens += r.metrics.numEntropyTokens
            }
            #expect(effTokens == own.metrics.numEntropyTokens)
            for k in 0..<(p.B * p.T) { #expect(abs(grad[k] - own.grad[k]) <= 1e-15, "\(level) \(k)") }

            var none = cfg
            none.entropyThreshold = .nan
            let empty = try lossRun(p, none)
            #expect(empty.metrics.numEntropyTokens == 0 && empty.metrics.policyTerm == 0)
        }
        var bad = makeConfig(.dapo, .token)
        bad.entropyThreshold = 1
        #expect(throws: GRPOError.self) { try lossRun(p, bad) }  // top_entropy_quantile is 1
    }

    @Test func quantileMatchesLinearInterpolation() {
        var v: [Float] = [4, 1, 3, 2]
        #expect(PolicyLoss.torchQuantile(&v, 0.5) == 2.5)
        var w: [Float] = [5, 1, 3]
        #expect(PolicyLoss.torchQuantile(&w, 1) == 5)
        #expect(PolicyLoss.torchQuantile(&w, 0) == 1)
        var e: [Float] = []
        #expect(PolicyLoss.torchQuantile(&e, 0.5) == nil)
        // Selection gives the sorted order statistics, ties and duplicates included.
        var rng = SplitMix(seed: 17)
        for n in [1, 2, 3, 10, 257, 1000] {
            let base = (0..<n).map { _ in Float(Int(rng.next() % 50)) / 7 }
            let sorted = base.sorted()
            for k in Set([0, n / 3, n / 2, n - 1]) {
                var v = base
                #expect(PolicyLoss.select(&v, k) == sorted[k])
                #expect(v[..<k].allSatisfy { $0 <= sorted[k] } && v[(k + 1)...].allSatisfy { $0 >= sorted[k] })
            }
        }
    }

    /// Clip metrics on a hand-made case: ratios 0.5 (A<0: low), 2 (A>0: high), 1.
    @Test func clipMetrics() throws {
        var p = LossProblem(B: 3, T: 2, seed: 1)
        p.mask = [1, 1, 1, 1, 1, 0]
        p.adv = [-1, 1, 1]
        p.old = [0.5, 0.5, 2, 2, 1, 1].enumerated().map { p.lp[$0.offset] - Double.log($0.element) }
        let m = try lossRun(p, makeConfig(.grpo, .token)).metrics
        #expect(m.clipRatioLowMean == 2.0 / 5 && m.clipRatioHighMean == 2.0 / 5)
        #expect(m.clipRatioRegionMean == 4.0 / 5)
        #expect(m.clipRatioLowMin == 0 && m.clipRatioHighMax == 1)
        #expect(m.numTokens == 5)
    }

    @Test func errors() throws {
        let p = LossProblem(seed: 2)
        var cfg = makeConfig(.grpo, .token, beta: 0.04)
        #expect(throws: GRPOError.self) { try lossRun(p, cfg, useRef: false) }
        cfg = makeConfig(.drGRPO, .token)
        cfg.maxCompletionLength = nil
        #expect(throws: GRPOError.self) { try lossRun(p, cfg) }
        cfg = makeConfig(.dapo, .token)
        cfg.gradientAccumulationSteps = 0
        #expect(throws: GRPOError.self) { try lossRun(p, cfg) }
        cfg = makeConfig(.dapo, .token)
        cfg.topEntropyQuantile = 1.5
        #expect(throws: GRPOError.self) { try lossRun(p, cfg) }
        #expect(throws: GRPOError.self) { try lossRun(p, makeConfig(.dapo, .token), adv: [1, 2]) }
        #expect(throws: GRPOError.self) {
            try lossRun(p, makeConfig(.vespo, .token), isr: [Double](repeating: 1, count: p.B))
        }
        var q = p
        q.mask[0] = 2
        #expect(throws: GRPOError.self) { try lossRun(q, makeConfig(.dapo, .token)) }
    }

    @Test func cABI() throws {
        let p = LossProblem(seed: 9)
        var cfg = grpo_loss_config()
        cfg.loss_type = 3; cfg.epsilon = 0.2; cfg.epsilon_high = 0.28; cfg.beta = 0.04
        cfg.top_entropy_quantile = 1; cfg.sapo_temperature_pos = 1; cfg.sapo_temperature_neg = 1.05
        cfg.vespo_k_pos = 2; cfg.vespo_lambda_pos = 3; cfg.vespo_k_neg = 3; cfg.vespo_lambda_neg = 2
        cfg.num_items_in_batch = -1; cfg.num_processes = 1; cfg.gradient_accumulation_steps = 1
        var err = [CChar](repeating: 0, count: 256)
        var metrics = grpo_loss_metrics()
        var grad = [Double](repeating: 0, count: p.B * p.T)
        func call(_ dtype: Int32, _ cols: Int = 1, ref: Bool = true) -> grpo_status {
            p.lp.withUnsafeBytes { lp in p.old.withUnsafeBytes { old in p.ref.withUnsafeBytes { rf in
            p.adv.withUnsafeBytes { adv in p.mask.withUnsafeBufferPointer { m in
                var inp = grpo_loss_inputs()
                inp.batch = p.B; inp.length = p.T; inp.dtype = dtype; inp.aux_dtype = 1
                inp.logps = lp.baseAddress; inp.old_logps = old.baseAddress
                inp.ref_logps = ref ? rf.baseAddress : nil
                inp.advantages = adv.baseAddress; inp.advantages_cols = cols; inp.mask = m.baseAddress
                return grpo_policy_loss(&inp, &cfg, &grad, nil, &metrics, &err, 256)
            }}}}}
        }
        #expect(call(1) == GRPO_OK)
        let swift = try lossRun(p, makeConfig(.dapo, .token, beta: 0.04))
        #expect(metrics.loss == swift.loss && grad == swift.grad)
        #expect(call(9) == GRPO_ERR_DTYPE)
        #expect(call(1, 3) == GRPO_ERR_SHAPE)
        #expect(call(1, ref: false) == GRPO_ERR_VALUE)
        let msg = err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        #expect(msg.contains("ref_logps"))
        cfg.loss_type = 42
        #expect(call(1) == GRPO_ERR_VALUE)
        cfg.loss_type = 2
        #expect(call(1) == GRPO_ERR_VALUE)  // dr_grpo without max_completion_length
        cfg.loss_type = 3
        #expect(grpo_policy_loss(nil, &cfg, nil, nil, &metrics, nil, 0) == GRPO_ERR_NULL)
        cfg.use_entropy_threshold = 2
        #expect(call(1) == GRPO_ERR_VALUE)
        cfg.use_entropy_threshold = 1
        cfg.entropy_threshold = 0.5
        #expect(call(1) == GRPO_ERR_VALUE)  // a threshold without top_entropy_quantile < 1
    }

    /// bf16 inputs give the f32 result of the bf16-rounded values.
    @Test func bf16MatchesRoundedF32() throws {
        let p = LossProblem(seed: 10)
        let r = { (x: [Double]) in x.map { BFloat16(Float($0)) } }
        let lp = r(p.lp), old = r(p.old), adv = p.adv.map { Float($0) }
        var cfg = makeConfig(.dapo, .sequence)
        cfg.numItemsInBatch = 30
        let out16: (PolicyLossMetrics, [Float]) = try lp.withUnsafeBufferPointer { lpb in
            try old.withUnsafeBufferPointer { ob in
                try adv.withUnsafeBufferPointer { ab in
                    try p.mask.withUnsafeBufferPointer { mb in
                        var g = [Float](repeating: 0, count: p.B * p.T)
                        let m = try g.withUnsafeMutableBufferPointer { gb in
                            try PolicyLoss.compute(PolicyLossInputs<BFloat16>(
                                batch: p.B, length: p.T, logps: lpb, oldLogps: ob, advantages: .f32(ab),
                                mask: mb), config: cfg, grad: gb, gradEntropies: nil)
                        }
                        return (m, g)
                    }
                }
            }
        }
        let f32 = try PolicyLoss.compute(batch: p.B, length: p.T, logps: lp.map { $0.real }, advantages: adv,
                                         mask: p.mask, oldLogps: old.map { $0.real }, config: cfg)
        #expect(out16.0.loss == f32.loss && out16.1 == f32.grad)
    }
}

@Suite struct FastPathTests {
    /// FastMath.exp / expm1AndKL against Double references: relative error within a few ulp.
    @Test func fastMathAccuracy() {
        var worstExp = 0.0, worstEm1 = 0.0, worstKL = 0.0
        var x: Float = -87
        while x < 88 {
            let ref = Double.exp(Double(x))
            worstExp = max(worstExp, abs(Double(FastMath.exp(x)) - ref) / ref)
            x += 0.0137
        }
        var d: Float = -3
        while d < 3 {
            let dd = Double(d)
            let (em1, kl) = FastMath.expm1AndKL(d)
            let rEm1 = Double.expm1(dd), rKL = rEm1 - dd  // glibc, double
            if rEm1 != 0 { worstEm1 = max(worstEm1, abs(Double(em1) - rEm1) / abs(rEm1)) }
            if rKL != 0 { worstKL = max(worstKL, abs(Double(kl) - rKL) / abs(rKL)) }
            d += 0.000731
        }
        #expect(worstExp < 2e-7, "exp rel err \(worstExp)")
        #expect(worstEm1 < 4e-7, "expm1 rel err \(worstEm1)")
        #expect(worstKL < 1e-6, "kl rel err \(worstKL)")
        #expect(FastMath.exp(0) == 1)
        #expect(FastMath.exp(100) == .infinity && FastMath.exp(-120) == 0)
        #expect(FastMath.exp(50).isFinite)
    }

    /// The float32 SIMD path (token level, clipped family) agrees with the Double kernel on
    /// inputs rounded to float, including partial blocks, masked NaN, delta and bias KL.
    static let fastCases: [(LossType, ImportanceSamplingLevel)] =
        [LossType.grpo, .bnpo, .drGRPO, .dapo, .luspo, .cispo, .sapo].map { ($0, .token) }
        + LossType.allCases.filter { supported($0, .sequence) }.map { ($0, .sequence) } + [(.vespo, .token)]

    /// Both float32 SIMD paths: token-level rows (clipped, cispo, sapo), and rows with constant
    /// policy factors (sequence level, vespo), with partial blocks, masked NaN, delta, bias KL,
    /// per-row IS ratio, the off-policy mask and the high-entropy mask.
    @Test(arguments: fastCases)
    func fastPathMatchesDouble(_ c: (LossType, ImportanceSamplingLevel)) throws {
        let (type, level) = c
        for variant in 0..<7 {
            var p = LossProblem(B: 7, T: 37, seed: 500 + UInt64(variant), spread: 0.4)
            p.lp = p.lp.map { Double(Float($0)) }; p.old = p.old.map { Double(Float($0)) }
            p.ref = p.ref.map { Double(Float($0)) }; p.ent = p.ent.map { Double(Float($0)) }
            p.adv = p.adv.map { Double(Float($0)) }
            for i in 0..<p.B where i != 1 { for t in 0..<16 { p.mask[i * p.T + t] = 1 } }
            var cfg = makeConfig(type, level, beta: variant == 0 ? 0 : 0.04, bias: variant == 2)
            if variant == 3 && type.isClipped { cfg.delta = 1.2 }
            cfg.entropyCoef = variant == 1 ? 0.05 : 0
            if variant == 5 { cfg.offPolicyMaskThreshold = 0.01 }
            if variant == 6 { cfg.topEntropyQuantile = 0.45; cfg.entropyCoef = 0.05 }
            let isr: [Double]? = variant == 4 && type != .vespo ? (0..<p.B).map { 0.5 + Double($0) / 8 } : nil
            var dirty = p
            for k in 0..<(p.B * p.T) where p.mask[k] == 0 { dirty.lp[k] = .nan; dirty.ref[k] = .infinity }
            let d = try lossRun(p, cfg, useSamp: variant == 5, isr: isr)
            let f = try PolicyLoss.compute(
                batch: p.B, length: p.T, logps: dirty.lp.map { Float($0) }, advantages: p.adv.map { Float($0) },
                mask: p.mask, oldLogps: p.old.map { Float($0) }, refLogps: dirty.ref.map { Float($0) },
                samplingLogps: variant == 5 ? p.samp.map { Float($0) } : nil,
                entropies: p.ent.map { Float($0) }, importanceSamplingRatio: isr?.map { Float($0) }, config: cfg)
            #expect(abs(f.loss - d.loss) <= 1e-6 * max(1, abs(d.loss)), "\(type) \(level) v\(variant)")
            #expect(sameCounts(f.metrics, d.metrics), "\(type) \(level) v\(variant)")
            for k in 0..<(p.B * p.T) {
                #expect(abs(Double(f.grad[k]) - d.grad[k]) <= 1e-6 * max(1e-2, abs(d.grad[k])), "\(type) v\(variant) \(k)")
            }
            #expect(abs(f.metrics.kl.isNaN ? 0 : f.metrics.kl - d.metrics.kl) < 1e-6)
            if let gh = f.gradEntropies, let dh = d.gradEntropies {
                for k in 0..<gh.count { #expect(abs(Double(gh[k]) - dh[k]) < 1e-8) }
            }
        }
    }
}
