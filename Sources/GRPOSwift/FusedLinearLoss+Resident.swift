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
//   grpo/sapo/dr_grpo/luspo/gmpo: B_block / B;  bnpo: max(sum_block m, 1) / max(sum m, 1);
//   entropy bonus (d loss / d H): max(sum_block m, 1) / max(sum m, 1).
// The one global dependence on log-probs is top_entropy_quantile < 1 (a quantile of all the
// entropies): that option, bfloat16 inputs (the weight would need widening per block) and
// sequences whose logits exceed the budget take the 4-GEMM schedule. Loss and metrics are then
// computed once on the whole batch's log-probs (O(N) work), exactly as the 4-GEMM schedule does.
//
// Per block (rows r0 ..< r0 + nr, whole sequences), everything is organised by vocabulary chunks
// of `gemmCols` (2048) columns, so that each chunk is transformed right after (or right before)
// the GEMM that writes (or reads) it, while it is still in cache: the block itself (nr x V floats)
// is far larger than any cache, and every extra sweep over it costs a trip to memory.
//   forward, one task per chunk: sgemm logits[:, chunk] = hidden[rows] W[chunk]^T, then fold each
//     row's chunk at once (y = scale / softcap / bias transform, chunk max m_c, s_c = sum e^d,
//     t_c = sum e^d d, d = (y - m_c) / tau). Without softcap and without an entropy gradient
//     (the common case) the fold stores e^d itself in place of the logits, so the backward needs
//     no second exp: p = e^d k_c with k_c = exp((m_c - M) / tau - log s) per (row, chunk);
//     otherwise it stores y and the backward recomputes p from the log-sum-exp.
//   merge, per row: the chunks' (m_c, s_c, t_c) combined in chunk order -> lp, H, log-sum-exp.
//   the loss kernel on the block: g = d loss / d lp, gH = d loss / d H (rescaled as above).
//   backward, one task per group of consecutive chunks (`backwardGroups` = 8 groups, fewer for
//     small V): overwrite the group's columns with d loss / d logits, then
//       grad_weight[group] (+)= G[:, group]^T hidden[rows]       (one sgemm, K = nr)
//       grad_bias[group] += column sums of G (rows in order)
//       P_group = G[:, group] W[group]                           (one sgemm, K = group width)
//     and finally grad_hidden[rows] = P_0 + P_1 + ... + P_7 (group order; P_0 is written straight
//     into grad_hidden). Splitting grad_hidden's reduction dimension by groups lets each task read
//     its part of G and W once; splitting its output columns instead (the previous design) made
//     every one of 7 tasks re-pack the whole resident block.
// Every partition (chunks, groups, rows of the merge) is fixed by the shapes, never by the thread
// count, and every sum runs in a fixed order, so results are bitwise identical for any thread
// count. Scratch (`ResidentPlan.scratchFloats`, within the budget): the block's logits (row stride
// V + 16), 3 statistics per (row, chunk) and one float per row, and the 7 partial grad_hidden
// blocks; mapped once per call (transparent huge pages requested, FusedLMHead.allocateScratch).
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
    /// Vocabulary columns per forward task (one logits sgemm, then the fold of its rows).
    static let gemmCols = 2048
    /// Vocabulary groups of the backward (the grad_hidden reduction is split into this many
    /// partial products): fixed, so the rounding never depends on the thread count.
    static let backwardGroups = 8
    static let mergeRows = 16
    static let ldPad = 16

    /// Blocking of the 3-GEMM schedule for one call.
    struct ResidentPlan {
        /// Blocks of whole sequences: block k holds sequences [k B / blocks, (k + 1) B / blocks).
        let blocks: Int
        /// Rows of the largest block (scratch is sized for it).
        let maxRows: Int
        /// Row stride of the resident logits (V + 16: a power-of-two stride such as V = 32768
        /// maps every row of a GEMM panel to the same cache sets).
        let ld: Int
        let chunks: Int
        /// Backward groups: group g holds chunks [g chunks / groups, (g + 1) chunks / groups), so
        /// group sizes differ by at most one chunk (equal shares of the GEMM work for the workers;
        /// ceil-sized groups left the last one short: 10 x 7 + 5 chunks at V = 151936).
        let groups: Int
        /// Floats of scratch per block row: logits, 3 statistics per chunk, the target's logit,
        /// and (groups - 1) partial grad_hidden rows.
        let floatsPerRow: Int
        var scratchFloats: Int { maxRows * floatsPerRow }

        func sequences(ofBlock k: Int, batch: Int) -> Range<Int> { (k * batch / blocks)..<((k + 1) * batch / blocks) }

        func chunks(ofGroup g: Int) -> Range<Int> { (g * chunks / groups)..<((g + 1) * chunks / groups) }
    }

    /// The 3-GEMM blocking, or nil when the schedule does not apply (bfloat16, a global entropy
    /// quantile, or one sequence's resident block above the budget).
    static func residentPlan(batch: Int, length: Int, hiddenSize: Int, vocab: Int, budget: Int, config: LossConfig,
                             isFloat: Bool) -> ResidentPlan? {
        guard isFloat, config.topEntropyQuantile >= 1, batch >= 1, length >= 1, vocab >= 1, hiddenSize >= 1,
              budget > 0 else { return nil }
        let chunks = (vocab + gemmCols - 1) / gemmCols
        let groups = Swift.min(backwardGroups, chunks)
        let (ld, o0) = vocab.addingReportingOverflow(ldPad)
        let (partials, o1) = (groups - 1).multipliedReportingOverflow(by: hiddenSize)
        let (a, o2) = ld.addingReportingOverflow(3 * chunks + 1)  // chunks <= vocab / 1024 + 1: no overflow
        let (floatsPerRow, o3) = a.addingReportingOverflow(partials)
        let (perRow, o4) = floatsPerRow.multipliedReportingOverflow(by: MemoryLayout<Float>.stride)
        let (perSeq, o5) = perRow.multipliedReportingOverflow(by: length)
        guard !o0, !o1, !o2, !o3, !o4, !o5, perSeq <= budget else { return nil }
        let maxSeqs = Swift.min(batch, budget / perSeq)
        let blocks = (batch + maxSeqs - 1) / maxSeqs
        let seqs = (batch + blocks - 1) / blocks  // the largest of the balanced blocks, <= maxSeqs
        return ResidentPlan(blocks: blocks, maxRows: seqs * length, ld: ld, chunks: chunks,
                            groups: groups, floatsPerRow: floatsPerRow)
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
    /// reference log-probs (given or computed) or nil. `lse`, `g`, `gH` (n each) are work space.
    static func computeResident(
        _ x: FusedLinearLossInputs<Float>, loss: LossConfig, plan p: FusedLMHead.Plan, resident rp: ResidentPlan,
        ref: UnsafeBufferPointer<Float>?, lp: UnsafeMutableBufferPointer<Float>,
        ent: UnsafeMutableBufferPointer<Float>, lse: UnsafeMutableBufferPointer<Double>,
        g: UnsafeMutableBufferPointer<Float>, gH: UnsafeMutableBufferPointer<Float>,
        gradHidden: UnsafeMutableBufferPointer<Float>?,
        gradWeight: UnsafeMutableBufferPointer<Float>?, gradBias: UnsafeMutableBufferPointer<Float>?
    ) throws(GRPOError) {
        let B = x.batch, T = x.length, V = x.vocab, H = x.hiddenSize
        guard let hp = x.hidden.baseAddress, let wp = x.weight.baseAddress, let lpp = lp.baseAddress,
              let entp = ent.baseAddress, let lsep = lse.baseAddress, let gp = g.baseAddress else { return }
        let withEntropy = loss.entropyCoef != 0
        guard !withEntropy || gH.count >= lp.count, let gHp = withEntropy ? gH.baseAddress : gp else { return }
        let bias = x.bias?.baseAddress
        let ghp = gradHidden?.baseAddress, gwp = gradWeight?.baseAddress, gbp = gradBias?.baseAddress
        let maxRows = rp.maxRows, ld = rp.ld, chunks = rp.chunks
        // Scratch: logits (maxRows x ld), statistics (maxRows x chunks x 3), the targets' logits
        // (maxRows), partial grad_hidden blocks ((groups - 1) x maxRows x H); products bounded by
        // scratchFloats, which residentPlan checked for overflow.
        let scratch = try FusedLMHead.allocateScratch(rp.scratchFloats)
        defer { FusedLMHead.releaseScratch(scratch) }
        guard let tile = scratch.baseAddress else { throw GRPOError(.internal, "empty scratch mapping") }
        let stats = tile + maxRows * ld
        let zyBuf = stats + maxRows * chunks * 3
        let partials = zyBuf + maxRows
        if let gbp { gbp.initialize(repeating: 0, count: V) }
        FusedLMHead.useSingleThreadedBLAS()
        // e^d stored by the forward (no second exp) unless a softcap or an entropy gradient needs y.
        let storeExp = p.cap == nil && !withEntropy

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
        let w = UnsafeRawPointer(wp).assumingMemoryBound(to: Float.self)
        let state = UncheckedSendable((tile, stats, zyBuf, partials, lpp, entp, lsep, gp, gHp))
        for k in 0..<rp.blocks {
            let seqs = rp.sequences(ofBlock: k, batch: B)
            let s0 = seqs.lowerBound, ns = seqs.count
            let r0 = s0 * T, nr = ns * T
            let hBlock = UnsafeRawPointer(hp + r0 * H).assumingMemoryBound(to: Float.self)
            let targets = UnsafeBufferPointer(rebasing: x.targets[r0..<(r0 + nr)])

            // 1. Forward: per chunk, the logits sgemm, then each row's fold while the chunk is hot.
            try Parallel.forEachChunk(count: V, chunkSize: gemmCols) { c, cols in
                let (tile, stats, zyBuf, _, _, _, _, _, _) = state.value
                let c0 = cols.lowerBound, nc = cols.count
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(nr), Int32(nc), Int32(H),
                            1, hBlock, Int32(H), w + c0 * H, Int32(H), 0, tile + c0, Int32(ld))
                for r in 0..<nr {
                    let y = Int(targets[r])
                    guard y >= 0 else { continue }
                    let st = stats + (r * chunks + c) * 3
                    foldChunk(tile + r * ld + c0, nc, bias.map { $0 + c0 }, p, target: y - c0, storeExp: storeExp,
                              m: &st[0], s: &st[1], t: &st[2], zy: zyBuf + r)
                }
            }
            // 2. Merge the chunks' statistics per row (chunk order): lp, H, log-sum-exp.
            try Parallel.forEachChunk(count: nr, chunkSize: mergeRows) { _, rows in
                let (_, stats, zyBuf, _, lpp, entp, lsep, _, _) = state.value
                for r in rows {
                    let i = r0 + r
                    guard targets[r] >= 0 else { lpp[i] = 0; entp[i] = 0; lsep[i] = 0; continue }
                    mergeRow(stats + r * chunks * 3, chunks, p, storeExp: storeExp, zy: zyBuf[r],
                             lp: &lpp[i], h: &entp[i], lse: &lsep[i])
                }
            }
            // 3. The loss kernel on the block: g = d loss / d lp, gH = d loss / d H (scaled).
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
            _ = try PolicyLoss.compute(inputs, config: blockConfig,
                                       grad: UnsafeMutableBufferPointer(start: gp + r0, count: nr),
                                       gradEntropies: withEntropy ? UnsafeMutableBufferPointer(start: gHp + r0, count: nr) : nil)
            let maskRatio = Double(Swift.max(blockMask, 1)) / Double(Swift.max(maskSum, 1))
            let gScale: Double
            switch loss.lossType {
            case .dapo, .cispo, .vespo: gScale = 1
            case .bnpo: gScale = maskRatio
            case .grpo, .sapo, .drGRPO, .luspo, .gmpo: gScale = Double(ns) / Double(B)
            }
            if gScale != 1 { for i in r0..<(r0 + nr) { gp[i] = Float(Double(gp[i]) * gScale) } }
            if withEntropy { for i in r0..<(r0 + nr) { gHp[i] = Float(Double(gHp[i]) * maskRatio) } }

            // 4. Backward, per group of chunks: d loss / d logits in place over the group's columns, then
            //    its grad_bias and grad_weight slices and its partial grad_hidden (one sgemm each).
            let beta: Float = k == 0 ? 0 : 1
            let outs = UncheckedSendable((ghp, gwp, gbp))
            // Rows without gradient (label < 0, g = gH = 0) contribute nothing to grad_weight, but a
            // NaN/inf in their hidden state would poison the GEMM (0 * NaN): GradWeightGEMM zeroes
            // such rows in a copy (nil, the usual case: the block itself, no copy).
            let gwClean = gwp == nil ? nil : GradWeightGEMM.cleanedBlock(rows: nr, hidden: hBlock, H: H) { r in
                targets[r] < 0 || gp[r0 + r] == 0 && (!withEntropy || gHp[r0 + r] == 0)
            }
            try Parallel.forEachChunk(count: rp.groups, chunkSize: 1) { gi, _ in
                let group = rp.chunks(ofGroup: gi)
                let (tile, stats, _, partials, _, entp, lsep, gp, gHp) = state.value
                let (ghp, gwp, gbp) = outs.value
                let g0 = group.lowerBound * gemmCols, gn = Swift.min(group.upperBound * gemmCols, V) - g0
                for c in group {
                    let c0 = c * gemmCols, nc = Swift.min(gemmCols, V - c0)
                    for r in 0..<nr {
                        let i = r0 + r
                        let gl = gp[i], gh = withEntropy ? gHp[i] : 0
                        let y = Int(targets[r])
                        let seg = tile + r * ld + c0
                        guard y >= 0, gl != 0 || gh != 0 else { seg.initialize(repeating: 0, count: nc); continue }
                        if storeExp {
                            // p = e k, d loss / d x = (p cA + 1[target] gl / tau) scale, cA = -gl / tau.
                            let k = stats[(r * chunks + c) * 3 + 1]
                            expBackward(seg, nc, factor: k * (-gl * p.invT) * p.scale, target: y - c0,
                                        extra: gl * p.invT * p.scale)
                        } else {
                            residentBackward(seg, nc, p, target: y - c0, lse: lsep[i], h: entp[i], gl: gl, gh: gh)
                        }
                    }
                }
                if let gbp {
                    for r in 0..<nr {
                        let seg = tile + r * ld + g0
                        for j in 0..<gn { gbp[g0 + j] += seg[j] }
                    }
                }
                if let gwp {
                    GradWeightGEMM.gemmTN(cleaned: gwClean, m: gn, n: H, k: nr, g: tile + g0, ldg: ld, x: hBlock, ldx: H,
                                          beta: beta, c: gwp + g0 * H, ldc: H)
                }
                if let ghp {
                    let partial = gi == 0 ? ghp + r0 * H : partials + (gi - 1) * maxRows * H
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(nr), Int32(H), Int32(gn),
                                1, tile + g0, Int32(ld), w + g0 * H, Int32(H), 0, partial, Int32(H))
                }
            }
            // 5. grad_hidden[rows] = P_0 + P_1 + ... (group order).
            if let ghp, rp.groups > 1 {
                let out = UncheckedSendable(ghp + r0 * H)
                try Parallel.forEachChunk(count: nr, chunkSize: mergeRows) { _, rows in
                    let (_, _, _, partials, _, _, _, _, _) = state.value
                    for r in rows {
                        let dst = out.value + r * H
                        for gi in 1..<rp.groups { addRow(dst, partials + (gi - 1) * maxRows * H + r * H, H) }
                    }
                }
            }
        }
    }

    /// Transforms one row's chunk in place (bias, scale, softcap: y) and folds it: m = max y,
    /// s = sum e^d, t = sum e^d d with d = max((y - m) / tau, -128); *zy = y at the target when it
    /// falls in the chunk. With `storeExp` the chunk ends holding e^d instead of y. `zy` is a
    /// pointer, written only by the chunk holding the target: the row's other chunks run on other
    /// threads at the same time, and an inout access would be a (ThreadSanitizer-reported)
    /// overlapping modify access to the same Float from each of them.
    @inline(__always)
    static func foldChunk(_ row: UnsafeMutablePointer<Float>, _ n: Int, _ bias: UnsafePointer<Float>?,
                          _ p: FusedLMHead.Plan, target: Int, storeExp: Bool, m: inout Float, s: inout Float,
                          t: inout Float, zy: UnsafeMutablePointer<Float>) {
        var z: Float = 0
        m = FusedLMHead.transformRow(row, n, bias, p, target: target, zy: &z)
        if target >= 0 && target < n { zy.pointee = z }
        (s, t) = FusedLMHead.expSums(row, n, max: m, p, storeExp: storeExp)
    }

    /// Combines one row's per-chunk (m, s, t) in chunk order into lp, H and the log-sum-exp; with
    /// `storeExp` each chunk's s is then replaced by k_c = exp((m_c - M) / tau - log s), the factor
    /// that turns the chunk's stored e^d into probabilities.
    @inline(__always)
    static func mergeRow(_ st: UnsafeMutablePointer<Float>, _ chunks: Int, _ p: FusedLMHead.Plan, storeExp: Bool,
                         zy: Float, lp: inout Float, h: inout Float, lse: inout Double) {
        var M = -Float.infinity
        for c in 0..<chunks where st[3 * c] > M || st[3 * c].isNaN { M = st[3 * c] }
        var s: Float = 0, t: Float = 0
        for c in 0..<chunks {
            let sc = st[3 * c + 1]
            guard st[3 * c] != -.infinity else { continue }  // a chunk of -inf logits adds nothing
            let d = (st[3 * c] - M) * p.invT
            let e = vexp(d)
            t += e * (st[3 * c + 2] + d * sc)
            s += e * sc
        }
        let logS = logf(s)
        lp = (zy - M) * p.invT - logS
        h = logS - t / s
        lse = Double(M) * Double(p.invT) + Double(logS)
        if storeExp {
            for c in 0..<chunks {
                st[3 * c + 1] = st[3 * c] != -.infinity ? vexp((st[3 * c] - M) * p.invT - logS) : 0
            }
        }
    }

    /// seg[j] = e_j * factor, plus `extra` at the target (when it falls in the chunk).
    @inline(__always)
    static func expBackward(_ seg: UnsafeMutablePointer<Float>, _ n: Int, factor: Float, target: Int, extra: Float) {
        let vf = SIMD8<Float>(repeating: factor)
        var j = 0
        while j + 8 <= n {
            Float.store8(Float.load8(seg + j) * vf, seg + j)
            j += 8
        }
        while j < n { seg[j] *= factor; j += 1 }
        if target >= 0 && target < n { seg[target] += extra }
    }

    /// dst[0..<n] += src[0..<n].
    @inline(__always)
    static func addRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
        var j = 0
        while j + 8 <= n {
            Float.store8(Float.load8(dst + j) + Float.load8(src + j), dst + j)
            j += 8
        }
        while j < n { dst[j] += src[j]; j += 1 }
    }

    /// Overwrites one row (or chunk) holding the transformed logits y (before the temperature)
    /// with d loss / d x (x the raw logits): p (cA + cB lp) (+ gl / tau at the target), times
    /// dy/dx = scale (1 - (y / c)^2) with the softcap c, else scale.
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
