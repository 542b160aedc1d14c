import Testing
@testable import GRPOSwift
import CGRPOBridge
#if canImport(Glibc)
import Glibc
#endif

/// Double reference of the fused head: logits = (h W^T + b) scale, softcap, / tau.
func referenceFused(hidden: [Double], weight: [Double], bias: [Double]?, rows: Int, hiddenSize: Int, vocab: Int,
                    targets: [Int64], config: LMHeadConfig) -> (lp: [Double], h: [Double]) {
    var z = [Double](repeating: 0, count: rows * vocab)
    for i in 0..<rows {
        for v in 0..<vocab {
            var acc = bias?[v] ?? 0
            for k in 0..<hiddenSize { acc += hidden[i * hiddenSize + k] * weight[v * hiddenSize + k] }
            var y = acc * config.logitScale
            if let c = config.finalLogitSoftcapping { y = c * tanh(y / c) }
            z[i * vocab + v] = y
        }
    }
    return referenceLogProbs(z, vocab: vocab, targets: targets, tau: config.temperature)
}

struct FusedCase {
    var rows: Int, hiddenSize: Int, vocab: Int
    var hidden: [Float], weight: [Float], bias: [Float]?
    var targets: [Int64]
    init(rows: Int, hiddenSize: Int, vocab: Int, bias: Bool, seed: UInt64, scale: Double = 1) {
        var rng = SplitMix(seed: seed)
        self.rows = rows; self.hiddenSize = hiddenSize; self.vocab = vocab
        hidden = (0..<(rows * hiddenSize)).map { _ in Float(rng.uniform(-scale, scale)) }
        weight = (0..<(vocab * hiddenSize)).map { _ in Float(rng.uniform(-scale, scale)) }
        self.bias = bias ? (0..<vocab).map { _ in Float(rng.uniform(-1, 1)) } : nil
        targets = randomTargets(rows: rows, vocab: vocab, rng: &rng)
    }

    func forward(_ config: LMHeadConfig) throws(GRPOError) -> LogProbsResult<Float> {
        var lp = [Float](repeating: 0, count: rows), h = lp
        var lse = [Double](repeating: 0, count: rows)
        let r: Result<Void, GRPOError> = hidden.withUnsafeBufferPointer { hb in
            weight.withUnsafeBufferPointer { wb in
                withOptionalBuffer(bias) { bb in
                    targets.withUnsafeBufferPointer { tb in
                        lp.withUnsafeMutableBufferPointer { lpb in
                            h.withUnsafeMutableBufferPointer { hhb in
                                lse.withUnsafeMutableBufferPointer { lb in
                                    Result { () throws(GRPOError) in
                                        try FusedLMHead.forward(
                                            hidden: hb, weight: wb, bias: bb, rows: rows, hiddenSize: hiddenSize,
                                            vocab: vocab, targets: tb, config: config,
                                            logProbs: lpb, entropy: hhb, logSumExp: lb)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        try r.get()
        return LogProbsResult(logProbs: lp, entropy: h, logSumExp: lse)
    }

    func backward(_ config: LMHeadConfig, _ f: LogProbsResult<Float>, gl: [Float]?, gh: [Float]?)
        throws(GRPOError) -> (hidden: [Float], weight: [Float], bias: [Float]?)
    {
        var gH = [Float](repeating: .nan, count: rows * hiddenSize)
        var gW = [Float](repeating: .nan, count: vocab * hiddenSize)
        var gB: [Float]? = bias == nil ? nil : [Float](repeating: .nan, count: vocab)
        var gBStore = gB ?? []
        let r: Result<Void, GRPOError> = hidden.withUnsafeBufferPointer { hb in
            weight.withUnsafeBufferPointer { wb in
                withOptionalBuffer(bias) { bb in
                    targets.withUnsafeBufferPointer { tb in
                        f.logSumExp.withUnsafeBufferPointer { lb in
                            f.entropy.withUnsafeBufferPointer { eb in
                                withOptionalBuffer(gl) { glb in
                                    withOptionalBuffer(gh) { ghb in
                                        gH.withUnsafeMutableBufferPointer { gHb in
                                            gW.withUnsafeMutableBufferPointer { gWb in
                                                gBStore.withUnsafeMutableBufferPointer { gBb in
                                                    Result { () throws(GRPOError) in
                                                        try FusedLMHead.backward(
                                                            hidden: hb, weight: wb, bias: bb, rows: rows,
                                                            hiddenSize: hiddenSize, vocab: vocab, targets: tb,
                                                            config: config, logSumExp: lb, entropy: eb,
                                                            gradLogProbs: glb, gradEntropy: ghb,
                                                            gradHidden: gHb, gradWeight: gWb,
                                                            gradBias: bias == nil ? nil : gBb)
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        try r.get()
        if gB != nil { gB = gBStore }
        return (gH, gW, gB)
    }
}

@Suite struct FusedLMHeadTests {
    static let configs: [LMHeadConfig] = [
        LMHeadConfig(),
        LMHeadConfig(temperature: 0.6, tileRows: 2, tileCols: 5),
        LMHeadConfig(temperature: 0.9, logitScale: 0.37, finalLogitSoftcapping: 1.5, tileRows: 3, tileCols: 8),
        LMHeadConfig(temperature: 1, logitScale: 2, finalLogitSoftcapping: 30, tileRows: 1, tileCols: 13),
    ]

    @Test(arguments: configs, [false, true])
    func forwardMatchesReference(config: LMHeadConfig, bias: Bool) throws {
        // N and V not multiples of the tile sizes (2 x 5, 3 x 8, 1 x 13) nor of 8.
        var c = FusedCase(rows: 7, hiddenSize: 9, vocab: 29, bias: bias, seed: 31)
        c.targets[3] = -100
        let f = try c.forward(config)
        let ref = referenceFused(hidden: c.hidden.map { Double($0) }, weight: c.weight.map { Double($0) },
                                 bias: c.bias?.map { Double($0) }, rows: c.rows, hiddenSize: c.hiddenSize,
                                 vocab: c.vocab, targets: c.targets, config: config)
        #expect(maxAbsDiff(f.logProbs.map { Double($0) }, ref.lp) < 2e-5)
        #expect(maxAbsDiff(f.entropy.map { Double($0) }, ref.h) < 2e-5)
        #expect(f.logProbs.allSatisfy { $0 <= 0 })
        #expect(f.logProbs[3] == 0 && f.entropy[3] == 0)
    }

    @Test(arguments: configs, [false, true])
    func gradientsMatchFiniteDifferences(config: LMHeadConfig, bias: Bool) throws {
        var c = FusedCase(rows: 5, hiddenSize: 4, vocab: 11, bias: bias, seed: 32)
        c.targets[1] = -100
        var rng = SplitMix(seed: 33)
        let gl = (0..<c.rows).map { _ in rng.uniform(-1, 1) }
        let gh = (0..<c.rows).map { _ in rng.uniform(-1, 1) }
        let f = try c.forward(config)
        let g = try c.backward(config, f, gl: gl.map { Float($0) }, gh: gh.map { Float($0) })
        // Finite differences of the Double reference in every parameter.
        var hd = c.hidden.map { Double($0) }, wd = c.weight.map { Double($0) }
        var bd = c.bias?.map { Double($0) }
        func loss() -> Double {
            let r = referenceFused(hidden: hd, weight: wd, bias: bd, rows: c.rows, hiddenSize: c.hiddenSize,
                                   vocab: c.vocab, targets: c.targets, config: config)
            return (0..<c.rows).reduce(0.0) { $0 + gl[$1] * r.lp[$1] + gh[$1] * r.h[$1] }
        }
        let eps = 1e-6
        func fd(_ get: () -> Double, _ set: (Double) -> Void) -> Double {
            let x0 = get()
            set(x0 + eps); let up = loss()
            set(x0 - eps); let down = loss()
            set(x0)
            return (up - down) / (2 * eps)
        }
        var fdH = [Double](), fdW = [Double](), fdB = [Double]()
        for k in 0..<hd.count { fdH.append(fd({ hd[k] }, { hd[k] = $0 })) }
        for k in 0..<wd.count { fdW.append(fd({ wd[k] }, { wd[k] = $0 })) }
        if bd != nil { for k in 0..<c.vocab { fdB.append(fd({ bd![k] }, { bd![k] = $0 })) } }
        #expect(maxRelErr(g.hidden.map { Double($0) }, fdH, atol: 1e-4) < 1e-3)
        #expect(maxRelErr(g.weight.map { Double($0) }, fdW, atol: 1e-4) < 1e-3)
        if let gb = g.bias { #expect(maxRelErr(gb.map { Double($0) }, fdB, atol: 1e-4) < 1e-3) }
        // The masked row (target -100) gets no hidden gradient.
        #expect(g.hidden[c.hiddenSize..<(2 * c.hiddenSize)].allSatisfy { $0 == 0 })
    }

    @Test func matchesTheLogitsPath() throws {
        // Same maths as LogProbs on materialised logits (bias, scale, softcap, temperature).
        let config = LMHeadConfig(temperature: 0.7, logitScale: 0.5, finalLogitSoftcapping: 20, tileRows: 16, tileCols: 100)
        let c = FusedCase(rows: 33, hiddenSize: 24, vocab: 517, bias: true, seed: 34)
        let f = try c.forward(config)
        var logits = [Float](repeating: 0, count: c.rows * c.vocab)
        for i in 0..<c.rows {
            for v in 0..<c.vocab {
                var acc = Double(c.bias![v])
                for k in 0..<c.hiddenSize { acc += Double(c.hidden[i * c.hiddenSize + k]) * Double(c.weight[v * c.hiddenSize + k]) }
                logits[i * c.vocab + v] = Float(20 * tanh(acc * 0.5 / 20))
            }
        }
        let l = try LogProbs.compute(logits: logits, vocab: c.vocab, targets: c.targets, temperature: 0.7)
        #expect(maxAbsDiff(f.logProbs.map { Double($0) }, l.logProbs.map { Double($0) }) < 2e-5)
        #expect(maxAbsDiff(f.entropy.map { Double($0) }, l.entropy.map { Double($0) }) < 2e-5)
    }

    @Test func singleRowAndLargeLogits() throws {
        // One row; hidden scaled so logits reach ~1e4; all-negative logits through the bias.
        var c = FusedCase(rows: 1, hiddenSize: 8, vocab: 40, bias: true, seed: 35, scale: 35)
        c.bias = (0..<40).map { -5000 - Float($0) }
        let config = LMHeadConfig(tileRows: 1, tileCols: 16)
        let f = try c.forward(config)
        let ref = referenceFused(hidden: c.hidden.map { Double($0) }, weight: c.weight.map { Double($0) },
                                 bias: c.bias?.map { Double($0) }, rows: 1, hiddenSize: 8, vocab: 40,
                                 targets: c.targets, config: config)
        // Logits ~1e4 carry Float GEMM rounding of ~1e-3: compare at that scale.
        #expect(maxAbsDiff(f.logProbs.map { Double($0) }, ref.lp) < 5e-3)
        #expect(f.logProbs[0] <= 0 && f.entropy[0].isFinite)
        let g = try c.backward(config, f, gl: [1], gh: [1])
        #expect(g.hidden.allSatisfy { $0.isFinite } && g.weight.allSatisfy { $0.isFinite })
    }

    @Test func threadCountDoesNotChangeBits() throws {
        // Several sub-GEMM tasks per tile: 600 rows > gemmRows, 2100 tile columns > gemmCols.
        #expect(600 > 2 * FusedLMHead.gemmRows && 2100 > 2 * FusedLMHead.gemmCols)
        let c = FusedCase(rows: 600, hiddenSize: 32, vocab: 2500, bias: true, seed: 36)
        let config = LMHeadConfig(temperature: 0.8, finalLogitSoftcapping: 10, tileRows: 0, tileCols: 2100)
        let gl = [Float](repeating: 0.5, count: c.rows), gh = [Float](repeating: -0.25, count: c.rows)
        try Parallel.setNumThreads(1)
        let f1 = try c.forward(config)
        let g1 = try c.backward(config, f1, gl: gl, gh: gh)
        try Parallel.setNumThreads(2)
        let f2 = try c.forward(config)
        let g2 = try c.backward(config, f2, gl: gl, gh: gh)
        try Parallel.setNumThreads(3)
        let f3 = try c.forward(config)
        let g3 = try c.backward(config, f3, gl: gl, gh: gh)
        try Parallel.setNumThreads(Parallel.defaultThreads())
        #expect(f1.logProbs == f2.logProbs && f1.entropy == f2.entropy && f1.logProbs == f3.logProbs)
        #expect(g1.hidden == g2.hidden && g1.weight == g2.weight && g1.bias! == g2.bias!)
        #expect(g1.hidden == g3.hidden && g1.weight == g3.weight && g1.bias! == g3.bias!)
    }

    @Test func bfloat16InputsEqualFloatInputsOfTheSameValues() throws {
        // Widening bf16 is exact, so the bf16 path must give the Float path's bits on the
        // widened values (several row blocks and vocabulary slices).
        let c0 = FusedCase(rows: 300, hiddenSize: 24, vocab: 700, bias: true, seed: 38)
        let hb = c0.hidden.map { BFloat16($0) }, wb = c0.weight.map { BFloat16($0) }, bb = c0.bias!.map { BFloat16($0) }
        var c = c0
        c.hidden = hb.map { $0.floatValue }; c.weight = wb.map { $0.floatValue }; c.bias = bb.map { $0.floatValue }
        let config = LMHeadConfig(temperature: 0.7, finalLogitSoftcapping: 8, tileRows: 128, tileCols: 300)
        let f = try c.forward(config)
        let gl = [Float](repeating: 1, count: c.rows), gh = [Float](repeating: 0.3, count: c.rows)
        let g = try c.backward(config, f, gl: gl, gh: gh)
        let n = c.rows, h = c.hiddenSize, v = c.vocab
        var lp = [Float](repeating: 0, count: n), ent = lp
        var lse = [Double](repeating: 0, count: n)
        var gH = [Float](repeating: .nan, count: n * h), gW = [Float](repeating: .nan, count: v * h)
        var gB = [Float](repeating: .nan, count: v)
        let r: Result<Void, GRPOError> = hb.withUnsafeBufferPointer { hp in
            wb.withUnsafeBufferPointer { wp in
                bb.withUnsafeBufferPointer { bp in
                    c.targets.withUnsafeBufferPointer { tp in
                        gl.withUnsafeBufferPointer { glp in
                            gh.withUnsafeBufferPointer { ghp in
                                Result { () throws(GRPOError) in
                                    try lp.withUnsafeMutableBufferPointer { lpp throws(GRPOError) in
                                        try ent.withUnsafeMutableBufferPointer { ep throws(GRPOError) in
                                            try lse.withUnsafeMutableBufferPointer { lsep throws(GRPOError) in
                                                try FusedLMHead.forward(
                                                    hidden: hp, weight: wp, bias: bp, rows: n, hiddenSize: h, vocab: v,
                                                    targets: tp, config: config, logProbs: lpp, entropy: ep,
                                                    logSumExp: lsep)
                                                try gH.withUnsafeMutableBufferPointer { a throws(GRPOError) in
                                                    try gW.withUnsafeMutableBufferPointer { b throws(GRPOError) in
                                                        try gB.withUnsafeMutableBufferPointer { cc throws(GRPOError) in
                                                            try FusedLMHead.backward(
                                                                hidden: hp, weight: wp, bias: bp, rows: n,
                                                                hiddenSize: h, vocab: v, targets: tp, config: config,
                                                                logSumExp: UnsafeBufferPointer(lsep),
                                                                entropy: UnsafeBufferPointer(ep),
                                                                gradLogProbs: glp, gradEntropy: ghp,
                                                                gradHidden: a, gradWeight: b, gradBias: cc)
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        try r.get()
        #expect(lp == f.logProbs && ent == f.entropy && lse == f.logSumExp)
        #expect(gH == g.hidden && gW == g.weight && gB == g.bias!)
        // The scratch for bf16 adds the widened row block and vocabulary slice.
        let sf = try FusedLMHead.scratchBytes(rows: n, hidden: h, vocab: v, config: config)
        let sb = try FusedLMHead.scratchBytes(rows: n, hidden: h, vocab: v, config: config, bfloat16: true)
        #expect(sb - sf == ((128 + 300) * h + 300) * 4)
    }

    @Test func scratchIsBoundedIndependentlyOfNAndV() throws {
        let cfg = LMHeadConfig()
        let small = try FusedLMHead.scratchBytes(rows: 4096, hidden: 896, vocab: 32768, config: cfg)
        let big = try FusedLMHead.scratchBytes(rows: 1 << 20, hidden: 896, vocab: 262_144, config: cfg)
        #expect(small == big)
        #expect(big == (FusedLMHead.defaultTileRows * FusedLMHead.defaultTileCols + 4 * FusedLMHead.defaultTileRows) * 4)
        #expect(try FusedLMHead.scratchBytes(rows: 3, hidden: 8, vocab: 10, config: cfg) == (3 * 10 + 12) * 4)
    }

    @Test func errors() {
        let c = FusedCase(rows: 2, hiddenSize: 3, vocab: 4, bias: false, seed: 37)
        #expect(throws: GRPOError.self) { try c.forward(LMHeadConfig(temperature: 0)) }
        #expect(throws: GRPOError.self) { try c.forward(LMHeadConfig(finalLogitSoftcapping: -1)) }
        #expect(throws: GRPOError.self) { try c.forward(LMHeadConfig(logitScale: .infinity)) }
        #expect(throws: GRPOError.self) { try c.forward(LMHeadConfig(tileRows: -1)) }
        var bad = c
        bad.targets[0] = 4
        #expect(throws: GRPOError.self) { try bad.forward(LMHeadConfig()) }
        var short = c
        short.weight.removeLast()
        #expect(throws: GRPOError.self) { try short.forward(LMHeadConfig()) }
    }
}
