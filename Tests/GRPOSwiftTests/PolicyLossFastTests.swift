import Testing
@testable import GRPOSwift
import CGRPOBridge

/// The kernel on (B,T) inputs of storage type S (Float, BFloat16 or Float16: float32 maths),
/// built from p's values by `store`; advantages and the IS ratio are float32.
func lossWithStorage<S: LossStorage>(
    _ p: LossProblem, _ cfg: LossConfig, store: (Double) -> S, useSamp: Bool = false, isr: [Double]? = nil
) throws -> (metrics: PolicyLossMetrics, grad: [Float], gradH: [Float]?) where S.Real == Float {
    let lp = p.lp.map(store), old = p.old.map(store), ref = p.ref.map(store), samp = p.samp.map(store)
    let ent = p.ent.map(store)
    let adv = p.adv.map { Float($0) }, ratio = isr?.map { Float($0) }
    let n = p.B * p.T
    var grad = [Float](repeating: .nan, count: n)
    var gradH = [Float](repeating: .nan, count: cfg.entropyCoef != 0 ? n : 0)
    let m = try lp.withUnsafeBufferPointer { lpB in
        try old.withUnsafeBufferPointer { oldB in
        try ref.withUnsafeBufferPointer { refB in
        try samp.withUnsafeBufferPointer { sampB in
        try ent.withUnsafeBufferPointer { entB in
        try adv.withUnsafeBufferPointer { advB in
        try p.mask.withUnsafeBufferPointer { maskB in
        try grad.withUnsafeMutableBufferPointer { g in
        try gradH.withUnsafeMutableBufferPointer { gh in
            try withOptionalArray(ratio) { isrB in
                try PolicyLoss.compute(
                    PolicyLossInputs<S>(batch: p.B, length: p.T, logps: lpB, oldLogps: oldB, refLogps: refB,
                                        samplingLogps: useSamp ? sampB : nil, entropies: entB,
                                        advantages: .f32(advB), mask: maskB,
                                        importanceSamplingRatio: isrB.map { .f32($0) }),
                    config: cfg, grad: g, gradEntropies: cfg.entropyCoef != 0 ? gh : nil)
            }
        }}}}}}}}
    }
    return (m, grad, gradH.isEmpty ? nil : gradH)
}

func withOptionalArray<T, R>(_ a: [T]?, _ body: (UnsafeBufferPointer<T>?) throws -> R) rethrows -> R {
    guard let a else { return try body(nil) }
    return try a.withUnsafeBufferPointer { try body($0) }
}

/// The configurations of FastPathTests.fastPathMatchesDouble: variant 0 plain, 1 entropy bonus,
/// 2 bias-corrected KL, 3 delta, 4 per-row IS ratio, 5 off-policy mask, 6 high-entropy mask.
func fastVariant(_ type: LossType, _ level: ImportanceSamplingLevel, _ variant: Int, B: Int)
    -> (LossConfig, [Double]?, Bool)
{
    var cfg = makeConfig(type, level, beta: variant == 0 ? 0 : 0.04, bias: variant == 2)
    if variant == 3 && type.isClipped { cfg.delta = 1.2 }
    cfg.entropyCoef = variant == 1 ? 0.05 : 0
    if variant == 5 { cfg.offPolicyMaskThreshold = 0.01 }
    if variant == 6 { cfg.topEntropyQuantile = 0.45; cfg.entropyCoef = 0.05 }
    let isr: [Double]? = variant == 4 && type != .vespo ? (0..<B).map { 0.5 + Double($0) / 8 } : nil
    return (cfg, isr, variant == 5)
}

@Suite struct SixteenBitFastPathTests {
    /// bfloat16 and float16 inputs run the float32 SIMD paths on their widened values: bit for bit
    /// the float32 result of the rounded inputs (loss, every metric, both gradients), and within
    /// the float32 tolerance of the Double kernel.
    @Test(arguments: FastPathTests.fastCases)
    func sixteenBitInputsEqualFloat32OfTheRoundedValues(_ c: (LossType, ImportanceSamplingLevel)) throws {
        let (type, level) = c
        for variant in 0..<7 {
            var p = LossProblem(B: 7, T: 45, seed: 900 + UInt64(variant), spread: 0.4)
            for i in 0..<p.B where i != 1 { for t in 0..<20 { p.mask[i * p.T + t] = 1 } }
            let (cfg, isr, samp) = fastVariant(type, level, variant, B: p.B)
            for sixteen in 0..<2 {
                // Round to the 16-bit type first: every path then sees the same values.
                var q = p
                let round: (Double) -> Double = sixteen == 0
                    ? { Double(BFloat16(Float($0)).floatValue) } : { Double(Float(Float16(Float($0)))) }
                q.lp = p.lp.map(round); q.old = p.old.map(round); q.ref = p.ref.map(round)
                q.samp = p.samp.map(round); q.ent = p.ent.map(round)
                q.adv = p.adv.map { Double(Float($0)) }
                let f32 = try lossWithStorage(q, cfg, store: { Float($0) }, useSamp: samp, isr: isr)
                let low = sixteen == 0
                    ? try lossWithStorage(q, cfg, store: { BFloat16(Float($0)) }, useSamp: samp, isr: isr)
                    : try lossWithStorage(q, cfg, store: { Float16(Float($0)) }, useSamp: samp, isr: isr)
                let tag = "\(type) \(level) v\(variant) \(sixteen == 0 ? "bf16" : "f16")"
                #expect(sameBits(low.metrics, f32.metrics), "\(tag)")
                #expect(low.grad.map(\.bitPattern) == f32.grad.map(\.bitPattern), "\(tag)")
                #expect(low.gradH?.map(\.bitPattern) == f32.gradH?.map(\.bitPattern), "\(tag)")
                // And the path itself is right: the Double kernel on the same rounded values.
                let d = try lossRun(q, cfg, useSamp: samp, isr: isr)
                #expect(abs(low.metrics.loss - d.loss) <= 1e-6 * max(1, abs(d.loss)), "\(tag)")
                for k in 0..<(q.B * q.T) {
                    #expect(abs(Double(low.grad[k]) - d.grad[k]) <= 1e-6 * max(1e-2, abs(d.grad[k])), "\(tag) \(k)")
                }
            }
        }
    }
}

@Suite struct LongRowFastPathTests {
    /// Rows long enough for several 16-block Float partial sums (flushed to Double), pairs of
    /// blocks, a trailing single block and a scalar tail, with partially masked blocks holding
    /// NaN / inf garbage in the masked lanes and one block whose valid lane is not finite (redone
    /// in scalar code): float32 SIMD result vs the Double kernel.
    @Test(arguments: [LossType.dapo, .grpo, .cispo, .sapo, .vespo])
    func longRowsMatchDouble(_ type: LossType) throws {
        let T = 8 * 16 * 2 + 8 + 5
        for level in ImportanceSamplingLevel.allCases {
            var p = LossProblem(B: 6, T: T, seed: 77 + UInt64(type.rawValue), spread: 0.4)
            for i in 0..<p.B {
                let len = [T, T - 3, 200, 131, 8, 0][i]
                for t in 0..<T { p.mask[i * T + t] = t < len && (t % 11 != 3 || i == 0) ? 1 : 0 }
            }
            var cfg = makeConfig(type, level, beta: 0.04)
            cfg.entropyCoef = 0.05
            var dirty = p
            for k in 0..<(p.B * T) where p.mask[k] == 0 { dirty.lp[k] = .nan; dirty.ref[k] = -.infinity }
            let d = try lossRun(p, cfg)
            let f = try lossWithStorage(dirty, cfg, store: { Float($0) })
            #expect(abs(f.metrics.loss - d.loss) <= 1e-6 * max(1, abs(d.loss)), "\(type) \(level)")
            #expect(sameCounts(f.metrics, d.metrics), "\(type) \(level)")
            #expect(abs(f.metrics.kl - d.metrics.kl) <= 1e-6 * max(1, abs(d.metrics.kl)), "\(type) \(level)")
            #expect(abs(f.metrics.entropy - d.metrics.entropy) <= 1e-6 * max(1, abs(d.metrics.entropy)))
            for k in 0..<(p.B * T) {
                #expect(abs(Double(f.grad[k]) - d.grad[k]) <= 1e-6 * max(1e-2, abs(d.grad[k])), "\(type) \(level) \(k)")
                if p.mask[k] == 0 { #expect(f.grad[k] == 0 && f.gradH?[k] == 0) }
            }
            // A valid token whose KL overflows to +inf: its block is redone in scalar code and
            // the loss is +inf, as the Double kernel says (no silent finite answer).
            var hot = p
            hot.ref[5] = 800
            let hd = try lossRun(hot, cfg)
            let hf = try lossWithStorage(hot, cfg, store: { Float($0) })
            #expect(hd.loss == .infinity && hf.metrics.loss == .infinity, "\(type) \(level)")
        }
    }
}

@Suite struct ConvertTests {
    static let values: [Float] = [
        0, -0.0, 1, -1, 0.5, 1.00390625, 1.005859375, 1.0078125, -2.0078125, 3.3895314e38, 3.4e38,
        .greatestFiniteMagnitude, 65504, 65520, 1e-45, -1e-45, 6e-8, 1e-5, .infinity, -.infinity, .nan,
        0.1, -123.456, 2.5e-3, 7e4,
    ]

    /// grpo_convert_f32 rounds scale * x in float32 to nearest-even bfloat16 / float16 (the
    /// scalar conversions of BFloat16 and Float16), in the SIMD body and the tail alike.
    @Test func convertMatchesScalarRounding() {
        var rng = SplitMix(seed: 5)
        var xs = ConvertTests.values
        for _ in 0..<1000 { xs.append(Float(rng.uniform(-3, 3)) * Float(1 << Int(rng.next() % 20))) }
        for n in [0, 1, 7, 8, 9, 17, xs.count] {
            for scale: Float in [1, -2.5, 3e-7, 7e4] {
                let src = Array(xs.prefix(n))
                var b = [UInt16](repeating: 0xAAAA, count: n)
                var h = [UInt16](repeating: 0xAAAA, count: n)
                var f = [Float](repeating: 0, count: n)
                #expect(grpo_convert_f32(src, n, scale, Int32(GRPO_BF16.rawValue), &b, nil, 0) == GRPO_OK)
                #expect(grpo_convert_f32(src, n, scale, Int32(GRPO_F16.rawValue), &h, nil, 0) == GRPO_OK)
                #expect(grpo_convert_f32(src, n, scale, Int32(GRPO_F32.rawValue), &f, nil, 0) == GRPO_OK)
                for i in 0..<n {
                    let x = src[i] * scale
                    let wantB = BFloat16(x), wantH = Float16(x)
                    if x.isNaN {
                        #expect(BFloat16(bits: b[i]).floatValue.isNaN && Float16(bitPattern: h[i]).isNaN && f[i].isNaN)
                    } else {
                        #expect(b[i] == wantB.bits, "bf16 \(x)")
                        #expect(h[i] == wantH.bitPattern, "f16 \(x)")
                        #expect(f[i].bitPattern == x.bitPattern)
                    }
                }
            }
        }
        // In place for float32.
        var g: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9]
        g.withUnsafeMutableBufferPointer { p in
            #expect(grpo_convert_f32(p.baseAddress, 9, 0.5, Int32(GRPO_F32.rawValue), p.baseAddress, nil, 0) == GRPO_OK)
        }
        #expect(g == [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5])
    }

    @Test func convertErrors() {
        var out = [UInt16](repeating: 0, count: 4)
        let src: [Float] = [1, 2, 3, 4]
        var err = [CChar](repeating: 0, count: 128)
        #expect(grpo_convert_f32(src, -1, 1, Int32(GRPO_BF16.rawValue), &out, &err, 128) == GRPO_ERR_SHAPE)
        #expect(grpo_convert_f32(src, 4, 1, Int32(GRPO_F64.rawValue), &out, &err, 128) == GRPO_ERR_DTYPE)
        #expect(String(cString: err).contains("out_dtype"))
        #expect(grpo_convert_f32(src, 4, 1, Int32(GRPO_BF16.rawValue), nil, &err, 128) == GRPO_ERR_NULL)
        #expect(grpo_convert_f32(nil, 4, 1, Int32(GRPO_BF16.rawValue), &out, &err, 128) == GRPO_ERR_NULL)
        #expect(grpo_convert_f32(nil, 0, 1, Int32(GRPO_BF16.rawValue), nil, &err, 128) == GRPO_OK)
    }
}

@Suite struct FastPathOverflowTests {
    /// A SIMD block whose valid lanes hold an overflowing ratio (e^200, e^95: +inf in float32)
    /// is not finite and is redone in scalar code, with or without the delta cap (the capped
    /// and uncapped specialisations of the clipped family), for positive, negative and zero
    /// advantages: the loss, every count and the gradient are those of the same 7 tokens run as the
    /// scalar tail of a T = 7 row (bit for bit, NaN where NaN), and the masked 8th lane of the
    /// block (NaN garbage) gets a zero gradient.
    @Test(arguments: [LossType.dapo, .grpo, .bnpo])
    func overflowingRatioBlocksMatchTheScalarTail(_ type: LossType) throws {
        let d: [Float] = [0, 200, -0.5, 0.1, 95, -200, 0.3]  // lp - old
        let lp: [Float] = [-1.2, -0.4, -2.5, -0.9, -1.7, -0.2, -3.1]
        let old = zip(lp, d).map { $0 - $1 }
        let ref = lp.map { $0 + 0.05 }
        for adv: Float in [1.5, -0.7, 0] {
            for delta in [nil, 1.2] as [Double?] {
                for beta in [0.0, 0.04] {
                    var cfg = makeConfig(type, .token, beta: beta)
                    cfg.delta = delta
                    let tail = try PolicyLoss.compute(
                        batch: 1, length: 7, logps: lp, advantages: [adv], mask: [UInt8](repeating: 1, count: 7),
                        oldLogps: old, refLogps: ref, config: cfg)
                    let block = try PolicyLoss.compute(
                        batch: 1, length: 8, logps: lp + [.nan], advantages: [adv], mask: [1, 1, 1, 1, 1, 1, 1, 0],
                        oldLogps: old + [.nan], refLogps: ref + [.infinity], config: cfg)
                    let tag = "\(type) A=\(adv) delta=\(String(describing: delta)) beta=\(beta)"
                    func same(_ x: Double, _ y: Double) -> Bool { x.bitPattern == y.bitPattern || (x.isNaN && y.isNaN) }
                    #expect(!block.metrics.loss.isFinite || !block.grad.prefix(7).allSatisfy(\.isFinite), "\(tag)")
                    #expect(same(block.metrics.loss, tail.metrics.loss), "\(tag)")
                    #expect(sameCounts(block.metrics, tail.metrics), "\(tag)")
                    #expect(same(block.metrics.kl, tail.metrics.kl), "\(tag)")
                    for k in 0..<7 { #expect(same(Double(block.grad[k]), Double(tail.grad[k])), "\(tag) \(k)") }
                    #expect(block.grad[7] == 0, "\(tag)")
                }
            }
        }
    }
}
