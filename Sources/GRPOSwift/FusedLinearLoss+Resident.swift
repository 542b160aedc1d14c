// The 3-GEMM schedule of the fused linear GRPO loss: each block of whole sequences keeps its
// logits resident in scratch between the forward fold and the gradient, so the logits GEMM
// runs once instead of twice.
//
// Why it is exact. The loss is global over the micro-batch, but every loss type's per-token
// gradient g_i depends on the other rows only through normalisers that the mask (and the
// config) fixes before any log-prob is known: B, L_i, sum m, num_items_in_batch. Sequence-level
// quantities (GSPO ratios, vespo weights, the off-policy mask) need only the sequence's own
// rows, which a block always holds whole. So for a block of sequences, the loss kernel called
// on the block alone gives g_i up to a known factor:
//   dapo/cispo/vespo: none (num_items_in_batch is set to the batch's value);
//   grpo/sapo/dr_grpo/luspo: B_block / B;  bnpo: max(sum_block m, 1) / max(sum m, 1);
//   entropy bonus (d loss / d H): max(sum_block m, 1) / max(sum m, 1).
// The one global dependence on log-probs is top_entropy_quantile < 1 (a quantile of all the
// entropies): that option, bfloat16 inputs (the weight would need widening per block) and
// sequences whose logits exceed the budget take the 4-GEMM schedule. Loss and metrics are then
// computed once on the whole batch's log-probs (O(N) work), exactly as the 4-GEMM schedule does.
//
// Per block (rows r0 ..< r0 + nr, whole sequences): one sgemm per 1024 vocabulary columns fills
// the nr x V tile (ldc = V); each row is folded (FusedLMHead.foldForward: transformed in place,
// online max / sum e^d / sum e^d d); the loss kernel on the block; each row is overwritten with
// d loss / d logits from its transformed values; grad_hidden[rows] = G W (sgemm per 128 hidden
// columns), grad_weight[cols] += G[:, cols]^T hidden[rows] (sgemm per 1024 vocabulary columns),
// grad_bias[cols] += column sums (rows in order). Every partition is fixed, so results are
// bitwise identical for any thread count. Scratch: nr x V floats, nr <= budget / (4 V).
#if canImport(Glibc)
import Glibc
#endif
import CBLAS

extension FusedLinearLoss {
    /// Default bound on the resident logits of one block (bytes): 256 MiB, and never more than
    /// half of the batch's N x V logits (`resolvedBudget`), so the default never allocates an
    /// N x V buffer: 1024 rows at N = 2048, V = 32768 (128 MiB); 441 rows at V = 151936.
    public static let defaultScratchBudget = 256 << 20

    /// The budget in force: `requested`, or min(defaultScratchBudget, N V 4 / 2) when nil.
    static func resolvedBudget(_ requested: Int?, rows: Int, vocab: Int) -> Int {
        if let requested { return requested }
        let (a, o1) = rows.multipliedReportingOverflow(by: vocab)
        let (b, o2) = a.multipliedReportingOverflow(by: 2)  // 4 bytes per float, half of them
        guard !o1, !o2 else { return defaultScratchBudget }
        return Swift.min(defaultScratchBudget, b)
    }
    static let gemmCols = 1024
    static let gemmHidden = 128
    static let foldRows = 4
    static let ldPad = 16

    /// Sequences per block for the 3-GEMM schedule, or nil when it does not apply.
    static func residentSequences(batch: Int, length: Int, vocab: Int, budget: Int, config: LossConfig,
                                  isFloat: Bool) -> Int? {
        guard isFloat, config.topEntropyQuantile >= 1, length >= 1, budget > 0 else { return nil }
        let (padded, o0) = vocab.addingReportingOverflow(ldPad)
        let (perRow, o1) = padded.multipliedReportingOverflow(by: MemoryLayout<Float>.stride)
        let (perSeq, o2) = perRow.multipliedReportingOverflow(by: length)
        guard !o0, !o1, !o2, perSeq <= budget else { return nil }
        return Swift.min(batch, budget / perSeq)
    }

    /// Slice of per-row or per-token values for sequences [s0, s0 + ns).
    static func slice(_ a: AuxValues, _ s0: Int, _ ns: Int, perToken: Int) -> AuxValues {
        let lo = s0 * perToken, hi = (s0 + ns) * perToken
        switch a {
        case .f32(let b): return .f32(UnsafeBufferPointer(rebasing: b[lo..<hi]))
        case .f64(let b): return .f64(UnsafeBufferPointer(rebasing: b[lo..<hi]))
        case .bf16(let b): return .bf16(UnsafeBufferPointer(rebasing: b[lo..<hi]))
        case .f16(let b): return .f16(UnsafeBufferPointer(rebasing: b[lo..<hi]))
        }
    }

    /// Runs the 3-GEMM schedule: fills lp, ent (n each) and the gradients. `ref` is the
    /// reference log-probs (given or computed) or nil.
    static func computeResident(
        _ x: FusedLinearLossInputs<Float>, loss: LossConfig, plan p: FusedLMHead.Plan, sequencesPerBlock: Int,
        ref: UnsafeBufferPointer<Float>?, lp: UnsafeMutableBufferPointer<Float>,
        ent: UnsafeMutableBufferPointer<Float>, gradHidden: UnsafeMutableBufferPointer<Float>?,
        gradWeight: UnsafeMutableBufferPointer<Float>?, gradBias: UnsafeMutableBufferPointer<Float>?
    ) throws(GRPOError) {
        let B = x.batch, T = x.length, V = x.vocab, H = x.hiddenSize
        guard let hp = x.hidden.baseAddress, let wp = x.weight.baseAddress,
              let lpp = lp.baseAddress, let entp = ent.baseAddress else { return }
        let bp = x.bias?.baseAddress
        let ghp = gradHidden?.baseAddress, gwp = gradWeight?.baseAddress, gbp = gradBias?.baseAddress
        let maxRows = sequencesPerBlock * T
        // Row stride V + 16 floats: a power-of-two stride (V = 32768) maps every row of a GEMM
        // panel to the same cache sets.
        let ld = V + ldPad  // no overflow: residentSequences checked (V + ldPad) * 4 * T
        let tileCount = try checkedProduct(maxRows, ld, what: "resident logits")
        let scratch = try FusedLMHead.allocateScratch(tileCount + 2 * maxRows)
        defer { FusedLMHead.releaseScratch(scratch) }
        guard let tile = scratch.baseAddress else { throw GRPOError(.internal, "empty scratch mapping") }
        let gBuf = tile + tileCount, gHBuf = gBuf + maxRows
        if let gbp { gbp.initialize(repeating: 0, count: V) }
        FusedLMHead.useSingleThreadedBLAS()

        // Normalisers of the whole batch (mask only).
        var maskSum = 0
        for i in 0..<(B * T) { maskSum += Int(x.mask[i]) }
        var blockConfig = loss
        switch loss.lossType {
        case .dapo, .cispo, .vespo:
            if blockConfig.numItemsInBatch == nil { blockConfig.numItemsInBatch = Double(maskSum) }
        default: break
        }
        let advPerToken = x.advantages.count == B ? 1 : T
        let isrPerToken = x.importanceSamplingRatio.map { $0.count == B ? 1 : T } ?? 1
        let lossState = UncheckedSendable((tile, lpp, entp, gBuf, gHBuf))
        var first = true
        var s0 = 0
        while s0 < B {
            let ns = Swift.min(sequencesPerBlock, B - s0)
            let r0 = s0 * T, nr = ns * T
            let hBlock = UnsafeRawPointer(hp + r0 * H).assumingMemoryBound(to: Float.self)
            let w = UnsafeRawPointer(wp).assumingMemoryBound(to: Float.self)
            let bias = bp.map { UnsafeRawPointer($0).assumingMemoryBound(to: Float.self) }
            // 1. logits of the block: one sgemm per vocabulary chunk.
            try Parallel.forEachChunk(count: V, chunkSize: gemmCols) { _, cols in
                let (tile, _, _, _, _) = lossState.value
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(nr), Int32(cols.count), Int32(H),
                            1, hBlock, Int32(H), w + cols.lowerBound * H, Int32(H),
                            0, tile + cols.lowerBound, Int32(ld))
            }
            // 2. fold each row: lp, H (and the row becomes the transformed logits).
            var lseBlock = [Double](repeating: 0, count: nr)
            try lseBlock.withUnsafeMutableBufferPointer { (lseB) throws(GRPOError) in
                let lseS = UncheckedSendable(lseB)
                try Parallel.forEachChunk(count: nr, chunkSize: foldRows) { _, rows in
                    let (tile, lpp, entp, _, _) = lossState.value
                    for r in rows {
                        let i = r0 + r
                        let y = Int(x.targets[i])
                        guard y >= 0 else { lpp[i] = 0; entp[i] = 0; lseS.value[r] = 0; continue }
                        var m = -Float.infinity, s: Float = 0, t: Float = 0, zy: Float = 0
                        FusedLMHead.foldForward(tile + r * ld, V, bias, p, target: y, m: &m, s: &s, t: &t, zy: &zy)
                        let logS = logf(s)
                        lpp[i] = (zy - m) * p.invT - logS
                        entp[i] = logS - t / s
                        lseS.value[r] = Double(m) * Double(p.invT) + Double(logS)
                    }
                }
            }
            // 3. the loss kernel on the block: g = d loss / d lp, gH = d loss / d H (scaled).
            var blockMask = 0
            for i in r0..<(r0 + nr) { blockMask += Int(x.mask[i]) }
            func rows(_ b: UnsafeBufferPointer<Float>?) -> UnsafeBufferPointer<Float>? {
                b.map { UnsafeBufferPointer(rebasing: $0[r0..<(r0 + nr)]) }
            }
            let inputs = PolicyLossInputs<Float>(
                batch: ns, length: T, logps: UnsafeBufferPointer(start: lpp + r0, count: nr),
                oldLogps: rows(x.oldLogps), refLogps: rows(ref), samplingLogps: rows(x.samplingLogps),
                entropies: UnsafeBufferPointer(start: entp + r0, count: nr),
                advantages: slice(x.advantages, s0, ns, perToken: advPerToken),
                mask: UnsafeBufferPointer(rebasing: x.mask[r0..<(r0 + nr)]),
                importanceSamplingRatio: x.importanceSamplingRatio.map { slice($0, s0, ns, perToken: isrPerToken) })
            let withEntropy = loss.entropyCoef != 0
            _ = try PolicyLoss.compute(inputs, config: blockConfig,
                                       grad: UnsafeMutableBufferPointer(start: gBuf, count: nr),
                                       gradEntropies: withEntropy ? UnsafeMutableBufferPointer(start: gHBuf, count: nr) : nil)
            let maskRatio = Double(Swift.max(blockMask, 1)) / Double(Swift.max(maskSum, 1))
            let gScale: Double
            switch loss.lossType {
            case .dapo, .cispo, .vespo: gScale = 1
            case .bnpo: gScale = maskRatio
            case .grpo, .sapo, .drGRPO, .luspo: gScale = Double(ns) / Double(B)
            }
            if gScale != 1 { for r in 0..<nr { gBuf[r] = Float(Double(gBuf[r]) * gScale) } }
            if withEntropy { for r in 0..<nr { gHBuf[r] = Float(Double(gHBuf[r]) * maskRatio) } }
            // 4. rows -> d loss / d logits.
            try lseBlock.withUnsafeBufferPointer { (lseB) throws(GRPOError) in
                let lseS = UncheckedSendable(lseB)
                try Parallel.forEachChunk(count: nr, chunkSize: foldRows) { _, rows in
                    let (tile, _, entp, gBuf, gHBuf) = lossState.value
                    for r in rows {
                        let i = r0 + r
                        let gl = gBuf[r], gh = withEntropy ? gHBuf[r] : 0
                        let y = Int(x.targets[i])
                        let row = tile + r * ld
                        guard y >= 0, gl != 0 || gh != 0 else { row.initialize(repeating: 0, count: V); continue }
                        residentBackward(row, V, p, target: y, lse: lseS.value[r], h: entp[i], gl: gl, gh: gh)
                    }
                }
            }
            // 5. grad_hidden[rows] = G W.
            if let ghp {
                let out = UncheckedSendable(ghp + r0 * H)
                try Parallel.forEachChunk(count: H, chunkSize: gemmHidden) { _, hc in
                    let (tile, _, _, _, _) = lossState.value
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(nr), Int32(hc.count), Int32(V),
                                1, tile, Int32(ld), w + hc.lowerBound, Int32(H),
                                0, out.value + hc.lowerBound, Int32(H))
                }
            }
            // 6. grad_weight[cols] += G[:, cols]^T hidden[rows]; grad_bias[cols] += column sums.
            if gwp != nil || gbp != nil {
                let beta: Float = first ? 0 : 1
                let outs = UncheckedSendable((gwp, gbp))
                let runs = GradWeightGEMM.rowRuns(rows: nr, hidden: hBlock, H: H) { r in
                    x.targets[r0 + r] < 0 || gBuf[r] == 0 && (!withEntropy || gHBuf[r] == 0)
                }
                try Parallel.forEachChunk(count: V, chunkSize: gemmCols) { _, cols in
                    let (tile, _, _, _, _) = lossState.value
                    let (gwp, gbp) = outs.value
                    if let gwp {
                        GradWeightGEMM.gemmTN(runs: runs, m: cols.count, n: H, k: nr, g: tile + cols.lowerBound,
                                              ldg: ld, x: hBlock, ldx: H, beta: beta,
                                              c: gwp + cols.lowerBound * H, ldc: H)
                    }
                    if let gbp {
                        for r in 0..<nr {
                            let row = tile + r * ld
                            for j in cols { gbp[j] += row[j] }
                        }
                    }
                }
            }
            first = false
            s0 += ns
        }
    }

    /// Overwrites one row holding the transformed logits z (FusedLMHead.foldForward's output)
    /// with d loss / d x (x the raw logits): p (cA + cB lp) (+ gl / tau at the target), times
    /// dz/dx = scale (1 - (z / c)^2) with the softcap c, else scale.
    @inline(__always)
    static func residentBackward(_ row: UnsafeMutablePointer<Float>, _ n: Int, _ p: FusedLMHead.Plan,
                                 target: Int, lse: Double, h: Float, gl: Float, gh: Float) {
        let cA = -(gl + gh * h) * p.invT, cB = -gh * p.invT
        let va = SIMD8<Float>(repeating: cA), vb = SIMD8<Float>(repeating: cB)
        let hi = Float(lse / Double(p.invT)), lo = Float(lse - Double(hi) * Double(p.invT))
        let negHi = SIMD8<Float>(repeating: -hi), vlo = SIMD8<Float>(repeating: lo)
        let sc = SIMD8<Float>(repeating: p.scale), it = SIMD8<Float>(repeating: p.invT)
        let floor = SIMD8<Float>(repeating: -128), one = SIMD8<Float>(repeating: 1)
        let invC = SIMD8<Float>(repeating: p.cap.map { 1 / $0 } ?? 0)
        let capped = p.cap != nil
        @inline(__always)
        func grad(_ z: SIMD8<Float>, _ extra: SIMD8<Float>) -> SIMD8<Float> {
            var lp = ((z + negHi) * it) - vlo
            lp = lp.replacing(with: floor, where: lp .< floor)
            let e = simdExp(lp)
            let g = e * va.addingProduct(vb, lp) + extra
            if capped {
                let th = z * invC
                return g * (sc * (one - th * th))
            }
            return g * sc
        }
        var targetGrad: Float = 0
        let hasTarget = target >= 0 && target < n
        if hasTarget { targetGrad = grad(SIMD8(repeating: row[target]), SIMD8(repeating: gl * p.invT))[0] }
        var j = 0
        while j + 8 <= n {
            Float.store8(grad(Float.load8(row + j), SIMD8()), row + j)
            j += 8
        }
        while j < n {
            row[j] = grad(SIMD8(repeating: row[j]), SIMD8())[0]
            j += 1
        }
        if hasTarget { row[target] = targetGrad }
    }
}
