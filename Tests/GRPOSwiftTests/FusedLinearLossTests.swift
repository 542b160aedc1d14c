import Testing
@testable import GRPOSwift

/// A small fused-loss problem with Float inputs and Double copies for the reference.
struct FusedLossCase {
    var batch: Int, length: Int, hiddenSize: Int, vocab: Int
    var hidden: [Float], weight: [Float], bias: [Float]?
    var targets: [Int64], mask: [UInt8], advantages: [Float], old: [Float], ref: [Float]

    init(batch: Int = 3, length: Int = 4, hiddenSize: Int = 5, vocab: Int = 9, bias: Bool, seed: UInt64) {
        var rng = SplitMix(seed: seed)
        self.batch = batch; self.length = length; self.hiddenSize = hiddenSize; self.vocab = vocab
        let n = batch * length
        hidden = (0..<(n * hiddenSize)).map { _ in Float(rng.uniform(-1, 1)) }
        weight = (0..<(vocab * hiddenSize)).map { _ in Float(rng.uniform(-1, 1)) }
        self.bias = bias ? (0..<vocab).map { _ in Float(rng.uniform(-0.5, 0.5)) } : nil
        targets = (0..<n).map { _ in Int64(rng.next() % UInt64(vocab)) }
        mask = (0..<n).map { i in i % length == 0 || rng.nextDouble() < 0.75 ? 1 : 0 }
        advantages = (0..<batch).map { _ in Float(rng.uniform(-1, 1)) }
        old = [Float](repeating: 0, count: n)
        ref = old
        // old/ref near the policy's log-probs: ratios around 1.
        let lp = referenceFused(hidden: hidden.map(Double.init), weight: weight.map(Double.init),
                                bias: self.bias?.map(Double.init), rows: n, hiddenSize: hiddenSize, vocab: vocab,
                                targets: targets, config: LMHeadConfig()).lp
        for i in 0..<n {
            old[i] = Float(lp[i] + rng.uniform(-0.15, 0.15))
            ref[i] = Float(lp[i] + rng.uniform(-0.1, 0.1))
        }
    }

    /// The loss in Double: Double logits / log-softmax, then the loss kernel in Double. With
    /// `frozen` (d loss / d lp at the base point), sum_i frozen_i lp_i instead: the surrogate whose
    /// derivative is TRL's gradient for losses with detached factors (cispo's clipped ratio,
    /// vespo's phi), where the loss value's own derivative differs by design.
    func referenceLoss(hidden h: [Double], weight w: [Double], bias b: [Double]?, config: LossConfig,
                       frozen: [Double]? = nil, wantGrad: Bool = false) throws -> (loss: Double, grad: [Double]) {
        let n = batch * length
        let (lp, _) = referenceFused(hidden: h, weight: w, bias: b, rows: n, hiddenSize: hiddenSize, vocab: vocab,
                                     targets: targets, config: LMHeadConfig())
        if let frozen { return (zip(frozen, lp).reduce(0) { $0 + $1.0 * $1.1 }, []) }
        let r = try PolicyLoss.compute(batch: batch, length: length, logps: lp, advantages: advantages.map(Double.init),
                                       mask: mask, oldLogps: old.map(Double.init),
                                       refLogps: config.beta != 0 ? ref.map(Double.init) : nil,
                                       config: config, computeGrad: wantGrad)
        return (r.loss, r.grad)
    }

    /// Checks a kernel result against the Double loss: value within 1e-5, and gradients w.r.t.
    /// hidden, weight and bias against central finite differences within 1e-4 relative (cispo and
    /// vespo through the surrogate with their detached factors frozen at the base point).
    func checkFiniteDifferences(_ r: FusedLinearLossResult, config: LossConfig) throws {
        let type = config.lossType
        var h = hidden.map(Double.init), w = weight.map(Double.init)
        let b = bias?.map(Double.init)
        let (loss0, g0) = try referenceLoss(hidden: h, weight: w, bias: b, config: config, wantGrad: true)
        #expect(abs(r.loss - loss0) <= 1e-5 * max(1, abs(loss0)))
        let frozen: [Double]? = type == .cispo || type == .vespo ? g0 : nil
        let eps = 1e-6
        func fd(_ x: inout [Double], _ i: Int, _ f: ([Double]) throws -> Double) rethrows -> Double {
            let s = x[i]
            x[i] = s + eps; let p = try f(x)
            x[i] = s - eps; let m = try f(x)
            x[i] = s
            return (p - m) / (2 * eps)
        }
        let gh = try (0..<h.count).map { i in
            try fd(&h, i) { hh in try referenceLoss(hidden: hh, weight: w, bias: b, config: config, frozen: frozen).loss }
        }
        let gw = try (0..<w.count).map { i in
            try fd(&w, i) { ww in try referenceLoss(hidden: h, weight: ww, bias: b, config: config, frozen: frozen).loss }
        }
        #expect(relativeError(r.gradHidden, gh) < 1e-4)
        #expect(relativeError(r.gradWeight, gw) < 1e-4)
        #expect(gh.contains { $0 != 0 })
        if var bb = b, let rb = r.gradBias {
            let gb = try (0..<bb.count).map { i in
                try fd(&bb, i) { x in try referenceLoss(hidden: h, weight: w, bias: x, config: config, frozen: frozen).loss }
            }
            #expect(relativeError(rb, gb) < 1e-4)
        }
    }

    func run(_ config: LossConfig, budget: Int = FusedLinearLoss.defaultScratchBudget) throws -> FusedLinearLossResult {
        try FusedLinearLoss.compute(batch: batch, length: length, hiddenSize: hiddenSize, vocab: vocab, hidden: hidden,
                                    weight: weight, bias: bias, targets: targets, mask: mask, advantages: advantages,
                                    oldLogps: old, refLogps: config.beta != 0 ? ref : nil, config: config,
                                    scratchBudget: budget)
    }
}

func relativeError(_ a: [Float], _ b: [Double]) -> Double {
    var num = 0.0, den = 0.0
    for (x, y) in zip(a, b) { num = max(num, abs(Double(x) - y)); den = max(den, abs(y)) }
    return num / max(den, 1e-30)
}

@Suite("Fused linear GRPO loss")
struct FusedLinearLossTests {
    static let configs: [(LossType, ImportanceSamplingLevel, Double)] = [
        (.grpo, .token, 0), (.grpo, .sequence, 0.04), (.bnpo, .token, 0.04), (.drGRPO, .token, 0),
        (.dapo, .sequence, 0.04), (.luspo, .sequence, 0), (.cispo, .token, 0.04), (.sapo, .token, 0),
        (.vespo, .token, 0.04),
    ]

    /// The loss configuration of `configs[which]` (dr_grpo with its max_completion_length, cispo
    /// with an epsilon_high that clips).
    static func config(_ which: Int) -> LossConfig {
        let (type, level, beta) = configs[which]
        var config = LossConfig(lossType: type, importanceSamplingLevel: level)
        config.beta = beta
        if type == .drGRPO { config.maxCompletionLength = 4 }
        if type == .cispo { config.epsilonHigh = 1.1 }
        return config
    }

    @Test("gradients match central finite differences of the Double loss (both schedules)",
          arguments: 0..<9, [0, 1])
    func finiteDifferences(_ which: Int, _ schedule: Int) throws {
        let config = Self.config(which)
        let c = FusedLossCase(bias: which % 2 == 0, seed: UInt64(100 + which))
        // schedule 0: 3-GEMM with blocks of one sequence (budget from the plan, asserted); 1: the
        // 4-GEMM schedule.
        let budget = schedule == 0
            ? try FusedLinearLossResidentTests.budget(c, sequences: 1, config: config) : 1
        let r = try c.run(config, budget: budget)
        try c.checkFiniteDifferences(r, config: config)
    }

    @Test("both schedules agree; results identical for 1, 2 and 3 threads")
    func schedulesAndThreads() throws {
        let c = FusedLossCase(batch: 6, length: 5, hiddenSize: 40, vocab: 2100, bias: true, seed: 7)
        var config = LossConfig(lossType: .grpo, importanceSamplingLevel: .sequence)
        config.beta = 0.04
        let before = Parallel.numThreads
        defer { try? Parallel.setNumThreads(before) }
        var results: [FusedLinearLossResult] = []
        for threads in [1, 2, 3] {
            try Parallel.setNumThreads(threads)
            results.append(try c.run(config, budget: 2 * c.length * c.vocab * 4))
        }
        for r in results.dropFirst() {
            #expect(r.gradWeight == results[0].gradWeight)
            #expect(r.gradHidden == results[0].gradHidden)
            #expect(r.gradBias == results[0].gradBias)
            #expect(r.metrics.allValues.map(\.bitPattern) == results[0].metrics.allValues.map(\.bitPattern))
        }
        let four = try c.run(config, budget: 1)
        #expect(abs(four.loss - results[0].loss) <= 1e-6 * max(1, abs(four.loss)))
        #expect(relativeError(results[0].gradWeight, four.gradWeight.map(Double.init)) < 1e-5)
        #expect(relativeError(results[0].gradHidden, four.gradHidden.map(Double.init)) < 1e-5)
    }

    @Test("invalid input throws a named error")
    func errors() throws {
        let c = FusedLossCase(bias: false, seed: 3)
        var config = LossConfig(lossType: .dapo)
        config.beta = 0.1
        #expect(throws: GRPOError.self) {  // beta without a reference
            _ = try FusedLinearLoss.compute(batch: c.batch, length: c.length, hiddenSize: c.hiddenSize,
                                            vocab: c.vocab, hidden: c.hidden, weight: c.weight, targets: c.targets,
                                            mask: c.mask, advantages: c.advantages, config: config)
        }
        var bad = c.targets
        bad[0] = Int64(c.vocab)
        #expect(throws: GRPOError.self) {
            _ = try FusedLinearLoss.compute(batch: c.batch, length: c.length, hiddenSize: c.hiddenSize,
                                            vocab: c.vocab, hidden: c.hidden, weight: c.weight, targets: bad,
                                            mask: c.mask, advantages: c.advantages, config: LossConfig())
        }
        #expect(throws: GRPOError.self) {  // hidden too short
            _ = try FusedLinearLoss.compute(batch: c.batch, length: c.length, hiddenSize: c.hiddenSize,
                                            vocab: c.vocab, hidden: Array(c.hidden.dropLast()), weight: c.weight,
                                            targets: c.targets, mask: c.mask, advantages: c.advantages,
                                            config: LossConfig())
        }
    }
}
