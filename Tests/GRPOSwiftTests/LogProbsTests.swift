import Testing
@testable import GRPOSwift
import CGRPOBridge
#if canImport(Glibc)
import Glibc
#endif

// MARK: f64 references (written independently of the kernels: plain two-pass softmax)

/// lp and H of one row in Double: z = x / tau, lse by max-shift, H = -sum p log p.
func referenceRow(_ x: ArraySlice<Double>, target: Int, tau: Double) -> (lp: Double, h: Double) {
    let z = x.map { $0 / tau }
    let m = z.max() ?? 0
    let s = z.reduce(0.0) { $0 + exp($1 - m) }
    let lse = m + log(s)
    var h = 0.0
    for v in z {
        let lp = v - lse
        let p = exp(lp)
        if p > 0 { h -= p * lp }
    }
    return (z[target] - lse, h)
}

/// Per-row lp and H for a (rows x vocab) Double matrix; unscored rows give (0, 0).
func referenceLogProbs(_ x: [Double], vocab: Int, targets: [Int64], mask: [UInt8]? = nil, tau: Double)
    -> (lp: [Double], h: [Double])
{
    var lp = [Double](), h = [Double]()
    for (i, t) in targets.enumerated() {
        if t < 0 || (mask.map { $0[i] == 0 } ?? false) { lp.append(0); h.append(0); continue }
        let r = referenceRow(x[(i * vocab)..<((i + 1) * vocab)], target: Int(t), tau: tau)
        lp.append(r.lp); h.append(r.h)
    }
    return (lp, h)
}

/// Central finite differences of L(x) = sum_i gl_i lp_i + gh_i H_i of the reference.
func finiteDifferenceGradient(_ x: [Double], vocab: Int, targets: [Int64], mask: [UInt8]? = nil, tau: Double,
                              gl: [Double], gh: [Double], step: Double = 1e-6) -> [Double] {
    func loss(_ x: [Double]) -> Double {
        let r = referenceLogProbs(x, vocab: vocab, targets: targets, mask: mask, tau: tau)
        var l = 0.0
        for i in 0..<targets.count { l += gl[i] * r.lp[i] + gh[i] * r.h[i] }
        return l
    }
    var g = [Double](repeating: 0, count: x.count)
    var xp = x
    for k in 0..<x.count {
        xp[k] = x[k] + step
        let up = loss(xp)
        xp[k] = x[k] - step
        let down = loss(xp)
        xp[k] = x[k]
        g[k] = (up - down) / (2 * step)
    }
    return g
}

func randomLogits(_ count: Int, scale: Double = 3, rng: inout SplitMix) -> [Double] {
    (0..<count).map { _ in rng.uniform(-scale, scale) }
}

func randomTargets(rows: Int, vocab: Int, rng: inout SplitMix) -> [Int64] {
    (0..<rows).map { _ in Int64(rng.next() % UInt64(vocab)) }
}

func maxAbsDiff(_ a: [Double], _ b: [Double]) -> Double {
    zip(a, b).reduce(0.0) { Swift.max($0, abs($1.0 - $1.1)) }
}

/// max |a - b| / (atol + |b|).
func maxRelErr(_ a: [Double], _ b: [Double], atol: Double) -> Double {
    zip(a, b).reduce(0.0) { Swift.max($0, abs($1.0 - $1.1) / (atol + abs($1.1))) }
}

@Suite struct LogProbsTests {
    @Test(arguments: [1.0, 0.6])
    func f64ForwardMatchesReference(tau: Double) throws {
        var rng = SplitMix(seed: 11)
        let rows = 5, vocab = 2053  // crosses a block (2048) and is not a multiple of 8
        let x = randomLogits(rows * vocab, rng: &rng)
        let t = randomTargets(rows: rows, vocab: vocab, rng: &rng)
        let r = try LogProbs.compute(logits: x, vocab: vocab, targets: t, temperature: tau)
        let ref = referenceLogProbs(x, vocab: vocab, targets: t, tau: tau)
        #expect(maxAbsDiff(r.logProbs, ref.lp) < 1e-12)
        #expect(maxAbsDiff(r.entropy, ref.h) < 1e-12)
    }

    @Test(arguments: [1.0, 0.6])
    func f32ForwardMatchesReference(tau: Double) throws {
        var rng = SplitMix(seed: 12)
        for vocab in [1, 7, 8, 13, 2048, 2049, 4103] {
            let rows = 3
            let xf = randomLogits(rows * vocab, scale: 8, rng: &rng).map { Float($0) }
            let t = randomTargets(rows: rows, vocab: vocab, rng: &rng)
            let r = try LogProbs.compute(logits: xf, vocab: vocab, targets: t, temperature: tau)
            let ref = referenceLogProbs(xf.map { Double($0) }, vocab: vocab, targets: t, tau: tau)
            #expect(maxAbsDiff(r.logProbs.map { Double($0) }, ref.lp) < 2e-5, "vocab \(vocab)")
            #expect(maxAbsDiff(r.entropy.map { Double($0) }, ref.h) < 2e-5, "vocab \(vocab)")
            #expect(r.logProbs.allSatisfy { $0 <= 0 })
        }
    }

    @Test func halfPrecisionInputsAreWidenedExactly() throws {
        var rng = SplitMix(seed: 13)
        let rows = 4, vocab = 1001
        let x = randomLogits(rows * vocab, scale: 5, rng: &rng)
        let t = randomTargets(rows: rows, vocab: vocab, rng: &rng)
        let bf = x.map { BFloat16(Float($0)) }
        let hf = x.map { Float16(Float($0)) }
        let rb = try LogProbs.compute(logits: bf, vocab: vocab, targets: t, temperature: 0.7)
        let rh = try LogProbs.compute(logits: hf, vocab: vocab, targets: t, temperature: 0.7)
        // Against the reference on the rounded values.
        let refB = referenceLogProbs(bf.map { Double($0.floatValue) }, vocab: vocab, targets: t, tau: 0.7)
        let refH = referenceLogProbs(hf.map { Double(Float($0)) }, vocab: vocab, targets: t, tau: 0.7)
        #expect(maxAbsDiff(rb.logProbs.map { Double($0) }, refB.lp) < 2e-5)
        #expect(maxAbsDiff(rb.entropy.map { Double($0) }, refB.h) < 2e-5)
        #expect(maxAbsDiff(rh.logProbs.map { Double($0) }, refH.lp) < 2e-5)
        #expect(maxAbsDiff(rh.entropy.map { Double($0) }, refH.h) < 2e-5)
        // bf16 rounding is round-to-nearest-even.
        #expect(BFloat16(Float(bitPattern: 0x3F80_8000)).bits == 0x3F80)
        #expect(BFloat16(Float(bitPattern: 0x3F81_8000)).bits == 0x3F82)
        #expect(BFloat16(Float(bitPattern: 0x3F80_8001)).bits == 0x3F81)
        #expect(BFloat16(Float.nan).floatValue.isNaN)
    }

    @Test func extremeLogits() throws {
        // +-1e4, all negative, -inf entries: finite, accurate outputs, lp <= 0.
        let vocab = 37
        var rows: [[Double]] = []
        rows.append((0..<vocab).map { $0 % 2 == 0 ? 1e4 : -1e4 })
        rows.append((0..<vocab).map { -1000 - Double($0) * 0.37 })
        rows.append((0..<vocab).map { $0 % 3 == 0 ? -.infinity : Double($0) * 0.1 })
        rows.append((0..<vocab).map { 1e4 + Double($0) * 1e-1 })
        let x = rows.flatMap { $0 }
        let t: [Int64] = [2, 5, 4, 36]
        let ref = referenceLogProbs(x, vocab: vocab, targets: t, tau: 1)
        let r64 = try LogProbs.compute(logits: x, vocab: vocab, targets: t)
        let r32 = try LogProbs.compute(logits: x.map { Float($0) }, vocab: vocab, targets: t)
        #expect(maxAbsDiff(r64.logProbs, ref.lp) < 1e-10)
        #expect(maxAbsDiff(r64.entropy, ref.h) < 1e-10)
        let lp32 = r32.logProbs.map { Double($0) }, h32 = r32.entropy.map { Double($0) }
        // Row 3: logits 1e4 + 0.1 j rounded to Float (ulp 1e-3): compare to the rounded input.
        let ref32 = referenceLogProbs(x.map { Double(Float($0)) }, vocab: vocab, targets: t, tau: 1)
        #expect(maxAbsDiff(lp32, ref32.lp) < 1e-4)
        #expect(maxAbsDiff(h32, ref32.h) < 1e-4)
        #expect(r32.logProbs.allSatisfy { $0 <= 0 && $0.isFinite })
        #expect(r32.entropy.allSatisfy { $0.isFinite && $0 >= -1e-6 })
        // Gradients stay finite with -inf logits and are 0 there.
        let g = try LogProbs.gradient(logits: x.map { Float($0) }, vocab: vocab, targets: t,
                                      gradLogProbs: [1, 1, 1, 1], gradEntropy: [0.5, 0.5, 0.5, 0.5])
        #expect(g.allSatisfy { $0.isFinite })
        #expect(g[2 * vocab] == 0)
    }

    @Test func entropyAndLogProbsAreShiftInvariant() throws {
        var rng = SplitMix(seed: 14)
        let rows = 3, vocab = 300
        let x = randomLogits(rows * vocab, rng: &rng).map { Float($0) }
        let t = randomTargets(rows: rows, vocab: vocab, rng: &rng)
        let a = try LogProbs.compute(logits: x, vocab: vocab, targets: t, temperature: 0.6)
        let b = try LogProbs.compute(logits: x.map { $0 + 37.5 }, vocab: vocab, targets: t, temperature: 0.6)
        let ref = referenceLogProbs(x.map { Double($0) }, vocab: vocab, targets: t, tau: 0.6)
        #expect(maxAbsDiff(a.entropy.map { Double($0) }, b.entropy.map { Double($0) }) < 1e-4)
        #expect(maxAbsDiff(b.entropy.map { Double($0) }, ref.h) < 1e-4)
        #expect(maxAbsDiff(b.logProbs.map { Double($0) }, ref.lp) < 1e-4)
    }

    @Test func unscoredRowsGiveZeros() throws {
        var rng = SplitMix(seed: 15)
        let vocab = 50
        let x = randomLogits(4 * vocab, rng: &rng)
        let t: [Int64] = [3, -100, 7, 9]
        let mask: [UInt8] = [1, 1, 0, 1]
        let r = try LogProbs.compute(logits: x.map { Float($0) }, vocab: vocab, targets: t, rowMask: mask)
        #expect(r.logProbs[1] == 0 && r.entropy[1] == 0 && r.logProbs[2] == 0 && r.entropy[2] == 0)
        #expect(r.logProbs[0] < 0 && r.entropy[3] > 0)
        let g = try LogProbs.gradient(logits: x.map { Float($0) }, vocab: vocab, targets: t, rowMask: mask,
                                      gradLogProbs: [1, 1, 1, 1], gradEntropy: [1, 1, 1, 1])
        #expect(g[vocab..<(3 * vocab)].allSatisfy { $0 == 0 })
        #expect(g[0..<vocab].contains { $0 != 0 })
    }

    @Test(arguments: [1.0, 0.6])
    func gradientsMatchFiniteDifferences(tau: Double) throws {
        var rng = SplitMix(seed: 16)
        let rows = 4, vocab = 19
        let x = randomLogits(rows * vocab, rng: &rng)
        let t: [Int64] = randomTargets(rows: rows - 1, vocab: vocab, rng: &rng) + [-100]
        let gl = (0..<rows).map { _ in rng.uniform(-1, 1) }
        let gh = (0..<rows).map { _ in rng.uniform(-1, 1) }
        let fd = finiteDifferenceGradient(x, vocab: vocab, targets: t, tau: tau, gl: gl, gh: gh)
        // f64 kernel.
        let g64 = try LogProbs.gradient(logits: x, vocab: vocab, targets: t, temperature: tau,
                                        gradLogProbs: gl, gradEntropy: gh)
        #expect(maxAbsDiff(g64, fd) < 1e-8)
        // f32 kernel (fp32 arithmetic: ~1e-6 relative).
        let g32 = try LogProbs.gradient(logits: x.map { Float($0) }, vocab: vocab, targets: t, temperature: tau,
                                        gradLogProbs: gl.map { Float($0) }, gradEntropy: gh.map { Float($0) })
        #expect(maxAbsDiff(g32.map { Double($0) }, fd) < 1e-5)
        // Only one of the two gradients.
        let gOnlyH = try LogProbs.gradient(logits: x, vocab: vocab, targets: t, temperature: tau,
                                           gradLogProbs: nil, gradEntropy: gh)
        let fdH = finiteDifferenceGradient(x, vocab: vocab, targets: t, tau: tau,
                                           gl: [Double](repeating: 0, count: rows), gh: gh)
        #expect(maxAbsDiff(gOnlyH, fdH) < 1e-8)
    }

    @Test func backwardWithSavedStatisticsAndInPlace() throws {
        var rng = SplitMix(seed: 17)
        let rows = 6, vocab = 1031
        let x = randomLogits(rows * vocab, rng: &rng).map { Float($0) }
        let t = randomTargets(rows: rows, vocab: vocab, rng: &rng)
        let gl = (0..<rows).map { _ in Float(rng.uniform(-1, 1)) }
        let gh = (0..<rows).map { _ in Float(rng.uniform(-1, 1)) }
        let f = try LogProbs.compute(logits: x, vocab: vocab, targets: t, temperature: 0.8)
        let recomputed = try LogProbs.gradient(logits: x, vocab: vocab, targets: t, temperature: 0.8,
                                               gradLogProbs: gl, gradEntropy: gh)
        var inPlace = x
        try inPlace.withUnsafeMutableBufferPointer { buf throws(GRPOError) in
            try t.withUnsafeBufferPointer { tb throws(GRPOError) in
                try f.logSumExp.withUnsafeBufferPointer { lse throws(GRPOError) in
                    try f.entropy.withUnsafeBufferPointer { h throws(GRPOError) in
                        try gl.withUnsafeBufferPointer { glb throws(GRPOError) in
                            try gh.withUnsafeBufferPointer { ghb throws(GRPOError) in
                                try LogProbs.backwardInPlace(logits: buf, rows: rows, vocab: vocab, targets: tb,
                                                             temperature: 0.8, logSumExp: lse, entropy: h,
                                                             gradLogProbs: glb, gradEntropy: ghb)
                            }
                        }
                    }
                }
            }
        }
        #expect(maxAbsDiff(inPlace.map { Double($0) }, recomputed.map { Double($0) }) < 1e-6)
        // bf16 in place: the bf16 rounding of the f32 gradient of the same bf16 logits.
        let xb = x.map { BFloat16($0) }
        let gb32 = try LogProbs.gradient(logits: xb, vocab: vocab, targets: t, temperature: 0.8,
                                         gradLogProbs: gl, gradEntropy: gh)
        var xbIn = xb
        try xbIn.withUnsafeMutableBufferPointer { buf throws(GRPOError) in
            try t.withUnsafeBufferPointer { tb throws(GRPOError) in
                try gl.withUnsafeBufferPointer { glb throws(GRPOError) in
                    try gh.withUnsafeBufferPointer { ghb throws(GRPOError) in
                        try LogProbs.backwardInPlace(logits: buf, rows: rows, vocab: vocab, targets: tb,
                                                     temperature: 0.8, logSumExp: nil, entropy: nil,
                                                     gradLogProbs: glb, gradEntropy: ghb)
                    }
                }
            }
        }
        #expect(xbIn == gb32.map { BFloat16($0) })
    }

    @Test func threadCountDoesNotChangeBits() throws {
        var rng = SplitMix(seed: 18)
        let rows = 67, vocab = 3001
        let x = randomLogits(rows * vocab, rng: &rng).map { Float($0) }
        let t = randomTargets(rows: rows, vocab: vocab, rng: &rng)
        let gl = [Float](repeating: 0.3, count: rows), gh = [Float](repeating: -0.2, count: rows)
        try Parallel.setNumThreads(1)
        let a = try LogProbs.compute(logits: x, vocab: vocab, targets: t)
        let ga = try LogProbs.gradient(logits: x, vocab: vocab, targets: t, gradLogProbs: gl, gradEntropy: gh)
        try Parallel.setNumThreads(3)
        let b = try LogProbs.compute(logits: x, vocab: vocab, targets: t)
        let gb = try LogProbs.gradient(logits: x, vocab: vocab, targets: t, gradLogProbs: gl, gradEntropy: gh)
        try Parallel.setNumThreads(Parallel.defaultThreads())
        #expect(a.logProbs == b.logProbs && a.entropy == b.entropy && ga == gb)
    }

    @Test func errors() {
        let x: [Float] = [0, 1, 2, 3, 4, 5]
        #expect(throws: GRPOError.self) { try LogProbs.compute(logits: x, vocab: 3, targets: [0, 3]) }
        #expect(throws: GRPOError.self) { try LogProbs.compute(logits: x, vocab: 3, targets: [0, 1], temperature: 0) }
        #expect(throws: GRPOError.self) { try LogProbs.compute(logits: x, vocab: 3, targets: [0, 1], temperature: .nan) }
        #expect(throws: GRPOError.self) { try LogProbs.compute(logits: x, vocab: 4, targets: [0, 1]) }
        #expect(throws: GRPOError.self) { try LogProbs.compute(logits: x, vocab: 0, targets: []) }
        #expect(throws: GRPOError.self) { try LogProbs.compute(logits: x, vocab: 3, targets: [0, 1], rowMask: [1]) }
    }
}
