import Testing
@testable import GRPOSwift

/// The 3-GEMM (resident) schedule itself: budgets computed from its plan so that the schedule
/// and the blocking under test are the ones that run (asserted), several vocabulary chunks and
/// backward groups, both backward variants (stored exp; recomputed from y with a softcap or an
/// entropy gradient).
@Suite("Fused linear GRPO loss, resident schedule")
struct FusedLinearLossResidentTests {
    /// The budget that gives blocks of exactly `sequences` sequences for this case.
    static func budget(_ c: FusedLossCase, sequences: Int, config: LossConfig = LossConfig()) throws -> Int {
        let any = try #require(FusedLinearLoss.residentPlan(
            batch: c.batch, length: c.length, hiddenSize: c.hiddenSize, vocab: c.vocab, budget: Int.max / 2,
            config: config, isFloat: true))
        let b = any.floatsPerRow * MemoryLayout<Float>.stride * c.length * sequences
        let rp = try #require(FusedLinearLoss.residentPlan(
            batch: c.batch, length: c.length, hiddenSize: c.hiddenSize, vocab: c.vocab, budget: b,
            config: config, isFloat: true))
        let blocks = (c.batch + sequences - 1) / sequences
        #expect(rp.blocks == blocks && rp.maxRows == (c.batch + blocks - 1) / blocks * c.length)
        return b
    }

    @Test("gradients match central finite differences of the Double loss on the 3-GEMM path",
          arguments: 0..<9)
    func finiteDifferences(_ which: Int) throws {
        let config = FusedLinearLossTests.config(which)
        let c = FusedLossCase(bias: which % 2 == 0, seed: UInt64(200 + which))
        // 3 sequences in blocks of at most 2: two uneven blocks (1 and 2 sequences).
        let r = try c.run(config, budget: try Self.budget(c, sequences: 2, config: config))
        try c.checkFiniteDifferences(r, config: config)
    }

    /// head variants: 0 plain (stored exp), 1 softcap + scale + temperature (recomputed from y),
    /// 2 entropy bonus (recomputed from y, d loss / d H).
    @Test("several chunks and backward groups: equals the 4-GEMM schedule; identical bits for 1, 2, 3 threads",
          arguments: 0..<3)
    func groupsAndThreads(_ variant: Int) throws {
        // V = 3 x 2048 + 100: 4 forward chunks (the last one short), 4 backward groups.
        let c = FusedLossCase(batch: 5, length: 3, hiddenSize: 24, vocab: 3 * FusedLinearLoss.gemmCols + 100,
                              bias: variant != 2, seed: UInt64(300 + variant))
        var config = LossConfig(lossType: variant == 2 ? .bnpo : .grpo,
                                importanceSamplingLevel: variant == 1 ? .sequence : .token)
        config.beta = 0.04
        if variant == 2 { config.entropyCoef = 0.3 }
        let head = variant == 1 ? LMHeadConfig(temperature: 0.7, logitScale: 1.3, finalLogitSoftcapping: 2.5)
                                : LMHeadConfig()
        let rp = try #require(FusedLinearLoss.residentPlan(batch: c.batch, length: c.length, hiddenSize: c.hiddenSize,
                                                           vocab: c.vocab, budget: Int.max / 2, config: config,
                                                           isFloat: true))
        #expect(rp.chunks == 4 && rp.groups == 4)
        let budget = try Self.budget(c, sequences: 2, config: config)  // blocks of 2, 2, 1
        func run(_ budget: Int) throws -> FusedLinearLossResult {
            try FusedLinearLoss.compute(batch: c.batch, length: c.length, hiddenSize: c.hiddenSize, vocab: c.vocab,
                                        hidden: c.hidden, weight: c.weight, bias: c.bias, targets: c.targets,
                                        mask: c.mask, advantages: c.advantages, oldLogps: c.old, refLogps: c.ref,
                                        config: config, head: head, scratchBudget: budget)
        }
        let before = Parallel.numThreads
        defer { try? Parallel.setNumThreads(before) }
        var results: [FusedLinearLossResult] = []
        for threads in [1, 2, 3] {
            try Parallel.setNumThreads(threads)
            results.append(try run(budget))
        }
        for r in results.dropFirst() {
            #expect(r.gradWeight == results[0].gradWeight)
            #expect(r.gradHidden == results[0].gradHidden)
            #expect(r.gradBias == results[0].gradBias)
            #expect(r.logProbs == results[0].logProbs && r.entropy == results[0].entropy)
            #expect(r.metrics.allValues.map(\.bitPattern) == results[0].metrics.allValues.map(\.bitPattern))
        }
        let four = try run(1)
        #expect(abs(four.loss - results[0].loss) <= 1e-6 * max(1, abs(four.loss)))
        #expect(relativeError(results[0].logProbs, four.logProbs.map(Double.init)) < 1e-6)
        #expect(relativeError(results[0].entropy, four.entropy.map(Double.init)) < 1e-5)
        #expect(relativeError(results[0].gradWeight, four.gradWeight.map(Double.init)) < 1e-5)
        #expect(relativeError(results[0].gradHidden, four.gradHidden.map(Double.init)) < 1e-5)
        if let b3 = results[0].gradBias, let b4 = four.gradBias {
            #expect(relativeError(b3, b4.map(Double.init)) < 1e-5)
        }
        #expect(results[0].gradHidden.contains { $0 != 0 })
    }

    @Test("blocks are balanced and within the budget; the scratch figure covers them")
    func blocking() throws {
        // 16 sequences, at most 6 per block: 3 blocks of 5, 5, 6 (not 6, 6, 4).
        let rp = try #require(FusedLinearLoss.residentPlan(batch: 16, length: 128, hiddenSize: 896, vocab: 32768,
                                                           budget: 128 << 20, config: LossConfig(), isFloat: true))
        #expect(rp.blocks == 3 && rp.maxRows == 6 * 128)
        #expect((0..<3).map { rp.sequences(ofBlock: $0, batch: 16).count } == [5, 5, 6])
        #expect(rp.scratchFloats * 4 <= 128 << 20)
        let bytes = try FusedLinearLoss.scratchBytes(batch: 16, length: 128, hiddenSize: 896, vocab: 32768,
                                                     head: LMHeadConfig(), bfloat16: false, refFromHidden: false,
                                                     scratchBudget: 128 << 20)
        #expect(bytes == rp.scratchFloats * 4 + 2048 * 24)
        // bfloat16, a global entropy quantile, or one sequence above the budget: no resident schedule.
        var q = LossConfig()
        q.topEntropyQuantile = 0.5
        #expect(FusedLinearLoss.residentPlan(batch: 16, length: 128, hiddenSize: 896, vocab: 32768,
                                             budget: 128 << 20, config: q, isFloat: true) == nil)
        #expect(FusedLinearLoss.residentPlan(batch: 16, length: 128, hiddenSize: 896, vocab: 32768,
                                             budget: 128 << 20, config: LossConfig(), isFloat: false) == nil)
        #expect(FusedLinearLoss.residentPlan(batch: 16, length: 128, hiddenSize: 896, vocab: 32768,
                                             budget: rp.floatsPerRow * 4 * 128 - 1, config: LossConfig(),
                                             isFloat: true) == nil)
    }

    @Test("backward groups cover every vocabulary chunk once, in order, with sizes within one chunk")
    func backwardGroups() throws {
        // V = 151936 (Qwen2.5): 75 chunks in 8 groups of 9 or 10 (ceil-sized groups gave 10 x 7 + 5,
        // so on 2 workers one did 40 chunks of GEMMs while the other did 35).
        for vocab in [100, 2048, 3 * 2048 + 100, 32768, 151936, 152064, 17 * 2048] {
            let rp = try #require(FusedLinearLoss.residentPlan(batch: 2, length: 4, hiddenSize: 8, vocab: vocab,
                                                               budget: Int.max / 2, config: LossConfig(),
                                                               isFloat: true))
            #expect(rp.chunks == (vocab + FusedLinearLoss.gemmCols - 1) / FusedLinearLoss.gemmCols)
            #expect(rp.groups == Swift.min(FusedLinearLoss.backwardGroups, rp.chunks))
            let ranges = (0..<rp.groups).map { rp.chunks(ofGroup: $0) }
            #expect(ranges.first?.lowerBound == 0 && ranges.last?.upperBound == rp.chunks)
            #expect(zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
            let sizes = ranges.map(\.count)
            #expect(sizes.min()! >= 1 && sizes.max()! - sizes.min()! <= 1, "vocab \(vocab): \(sizes)")
        }
    }
}
