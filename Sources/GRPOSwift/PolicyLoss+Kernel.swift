// The policy-loss kernel: forward, closed-form backward and metrics in one sweep per row
// (two for sequence-level importance sampling, whose ratio couples the row's tokens).
//
// Structure:
//   1. pre-pass over the mask: row lengths L_i (and validation of the 0/1 bytes);
//   2. (high-entropy mask only) the torch.quantile threshold of the valid entropies, unless
//      the caller gives it (LossConfig.entropyThreshold: the quantile over every process);
//   3. main pass, parallel over rows: per-row statistics (sequence log-ratio, vespo weight,
//      off-policy KL), then per token the loss, its derivative and the metric counts;
//      per-row partial sums are stored by row index;
//   4. the partials are combined in row order (bitwise identical for any thread count).
//
// Per-token maths runs in S.Real (Float for f32/bf16/f16 inputs, Double for f64) exactly as
// TRL's eager torch code does; every sum is in Double.

/// One token's policy loss, its derivatives and metric indicators (see policyToken).
struct PolicyToken<R: LossReal> {
    var l: R = 0, dldr: R = 0, dldlp: R = 0, phi: R = 0
    var low = false, high = false, cispoClipped = false
    /// Dual-clip PPO capped this token (verl's pg_clipfrac_lower indicator).
    var dualClipped = false
}

public enum PolicyLoss {
    /// Tokens per parallel chunk (whole rows per chunk; results do not depend on it).
    static let tokensPerChunk = 8192

    /// Per-row partial sums, `RowStat.count` doubles per row.
    enum RowStat {
        static let policy = 0, kl = 1, entropy = 2, entropyEff = 3, low = 4, high = 5
        static let region = 6, cispo = 7, phi = 8, dropped = 9, dual = 10
        static let count = 11
    }

    /// Computes the loss, gradients (optional) and metrics. `grad` and `gradEntropies` are
    /// (B,T) when given; see grpo_policy_loss in the header for the contract.
    public static func compute<S: LossStorage>(
        _ inp: PolicyLossInputs<S>, config cfg: LossConfig,
        grad: UnsafeMutableBufferPointer<S.Real>?,
        gradEntropies: UnsafeMutableBufferPointer<S.Real>?
    ) throws(GRPOError) -> PolicyLossMetrics {
        typealias R = S.Real
        try cfg.validate()
        let B = inp.batch, T = inp.length
        guard B >= 1 else { throw GRPOError(.shape, "the batch must have at least one row, got \(B)") }
        guard T >= 0 else { throw GRPOError(.shape, "the completion length must be >= 0, got \(T)") }
        let n = try checkedProduct(B, T, what: "logps (B*T)")

        func checkBT(_ count: Int?, _ name: String) throws(GRPOError) {
            if let count, count != n {
                throw GRPOError(.shape, "\(name) holds \(count) elements, expected B*T = \(B)*\(T) = \(n)")
            }
        }
        try checkBT(inp.logps.count, "logps")
        try checkBT(inp.oldLogps?.count, "old_logps")
        try checkBT(inp.refLogps?.count, "ref_logps")
        try checkBT(inp.samplingLogps?.count, "sampling_logps")
        try checkBT(inp.entropies?.count, "entropies")
        try checkBT(inp.mask.count, "mask")
        try checkBT(grad?.count, "grad")
        try checkBT(gradEntropies?.count, "grad_entropies")
        let advCount = inp.advantages.count
        guard advCount == B || advCount == n else {
            throw GRPOError(.shape, "advantages holds \(advCount) elements, expected B = \(B) or B*T = \(n)")
        }
        let advPerToken = advCount == n && advCount != B
        var isPerToken = false
        if let isr = inp.importanceSamplingRatio {
            guard isr.count == B || isr.count == n else {
                throw GRPOError(.shape,
                    "importance_sampling_ratio holds \(isr.count) elements, expected B = \(B) or B*T = \(n)")
            }
            isPerToken = isr.count == n
            if cfg.lossType == .vespo && !isPerToken && T != 1 {
                throw GRPOError(.value,
                    "VESPO loss requires `vllm_importance_sampling_mode` to be either 'token_truncate' or "
                    + "'token_mask' (a per-token importance_sampling_ratio of shape (B, T)); got a "
                    + "per-sequence ratio of shape (B, 1)")
            }
        }
        if cfg.beta != 0 && inp.refLogps == nil {
            throw GRPOError(.value, "ref_logps is required when beta != 0 (beta = \(cfg.beta))")
        }
        if cfg.topEntropyQuantile < 1 && inp.entropies == nil {
            throw GRPOError(.value,
                "entropies are required when top_entropy_quantile < 1 (got \(cfg.topEntropyQuantile))")
        }
        if cfg.entropyCoef != 0 && inp.entropies == nil {
            throw GRPOError(.value, "entropies are required when entropy_coef != 0 (got \(cfg.entropyCoef))")
        }
        if grad != nil && cfg.entropyCoef != 0 && gradEntropies == nil {
            throw GRPOError(.null, "grad_entropies is required when a gradient is requested and entropy_coef != 0")
        }
        if gradEntropies != nil && (grad == nil || cfg.entropyCoef == 0) {
            throw GRPOError(.value,
                "grad_entropies must be NULL unless grad is requested and entropy_coef != 0")
        }
        try cfg.validateExtraInputs(advantagesPerToken: advPerToken,
                                    hasImportanceSamplingRatio: inp.importanceSamplingRatio != nil)

        let mask = inp.mask
        let rowsPerChunk = Swift.max(1, tokensPerChunk / Swift.max(T, 1))

        // 1. Row lengths and mask validation (a popcount over B*T bytes: in one chunk up to 1 MiB,
        // where waking a worker thread costs more than the pass).
        var rowLen = [Int](repeating: 0, count: B)
        var badRow = [Bool](repeating: false, count: B)
        let maskRowsPerChunk = n <= 1 << 20 ? B : rowsPerChunk
        try rowLen.withUnsafeMutableBufferPointer { (len) throws(GRPOError) in
            try badRow.withUnsafeMutableBufferPointer { (bad) throws(GRPOError) in
                try Parallel.forEachChunk(count: B, chunkSize: maskRowsPerChunk) { _, rows in
                    for i in rows {
                        // 8 bytes at a time: with 0/1 bytes the popcount is the count.
                        var c = 0, orBits: UInt64 = 0
                        let base = i * T
                        var t = 0
                        if let p = mask.baseAddress {
                            while t + 8 <= T {
                                let v = UnsafeRawPointer(p + base + t).loadUnaligned(as: UInt64.self)
                                c &+= v.nonzeroBitCount
                                orBits |= v
                                t += 8
                            }
                        }
                        while t < T {
                            let v = mask[base + t]
                            c &+= v.nonzeroBitCount
                            orBits |= UInt64(v)
                            t += 1
                        }
                        len[i] = c
                        bad[i] = orBits & ~0x0101_0101_0101_0101 != 0
                    }
                }
            }
        }
        if let i = badRow.firstIndex(of: true) {
            throw GRPOError(.value, "mask must hold only 0 and 1; row \(i) holds another value")
        }
        let totalTokens = rowLen.reduce(0, +)

        // 2. High-entropy mask threshold (torch.quantile, linear, in float32).
        let useEntropyMask = cfg.topEntropyQuantile < 1
        var entropyThreshold = R(0)
        var entropyMaskAll0 = false
        if useEntropyMask, let external = cfg.entropyThreshold {
            entropyThreshold = R(external)  // computed by the caller (e.g. over every process)
            if external.isNaN { entropyMaskAll0 = true }
        } else if useEntropyMask, let ent = inp.entropies {
            var values = [Float]()
            values.reserveCapacity(totalTokens)
            for k in 0..<n where mask[k] != 0 { values.append(Float(ent[k].real)) }
            if let q = torchQuantile(&values, Float(1.0 - cfg.topEntropyQuantile)) {
                entropyThreshold = R(q)
                if q.isNaN { entropyMaskAll0 = true }
            } else {
                entropyMaskAll0 = true  // no valid token: TRL's mask is all False
            }
        }

        // Row weights: d loss / d (per-token loss) for a valid token of row i.
        let ga = Double(cfg.gradientAccumulationSteps)
        let spg = Double(cfg.stepsPerGeneration ?? cfg.gradientAccumulationSteps)
        let numItems = cfg.numItemsInBatch ?? Double(totalTokens)
        let tokenNormaliser = Swift.max(numItems, 1) / Double(cfg.numProcesses) * ga / spg
        let bD = Double(B)
        let bnpoNormaliser = Double(Swift.max(totalTokens, 1))
        let maxLen = Double(cfg.maxCompletionLength ?? 1)
        let lossType = cfg.lossType
        @inline(__always) func rowWeight(_ L: Int) -> Double {
            switch lossType {
            case .grpo, .sapo, .gmpo: return 1 / Double(Swift.max(L, 1)) / bD / ga
            case .bnpo: return 1 / bnpoNormaliser / ga
            case .drGRPO: return 1 / (bD * maxLen) / ga
            case .dapo, .cispo, .vespo: return 1 / tokenNormaliser
            case .luspo: return 1 / bD / ga
            }
        }

        // Effective entropy-bonus tokens (mask & entropy mask) need the global count first.
        var effLen = rowLen
        if useEntropyMask, let ent = inp.entropies {
            let thr = entropyThreshold, all0 = entropyMaskAll0
            try effLen.withUnsafeMutableBufferPointer { (eff) throws(GRPOError) in
                try Parallel.forEachChunk(count: B, chunkSize: rowsPerChunk, dynamic: true) { _, rows in
                    for i in rows {
                        var c = 0
                        if !all0 {
                            for t in 0..<T where mask[i * T + t] != 0 && ent[i * T + t].real >= thr { c += 1 }
                        }
                        eff[i] = c
                    }
                }
            }
        }
        let totalEff = effLen.reduce(0, +)
        let entropyGrad = -cfg.entropyCoef / Double(Swift.max(totalEff, 1)) / ga

        // Constants in the per-token precision (torch casts Python scalars to the tensor dtype;
        // torch.where(cond, float, float) tensors are float32, hence the Float rounding).
        let lo = R(1.0 - cfg.epsilon), hi = R(1.0 + cfg.resolvedEpsilonHigh)
        let epsH = R(cfg.resolvedEpsilonHigh)
        let useDelta = cfg.delta != nil
        let delta = R(cfg.delta ?? 0)
        let tauPos = R(Float(cfg.sapoTemperaturePos)), tauNeg = R(Float(cfg.sapoTemperatureNeg))
        let kPos = R(Float(cfg.vespoKPos)), kNeg = R(Float(cfg.vespoKNeg))
        let lamPos = Swift.max(R(Float(cfg.vespoLambdaPos)), R(Float(1e-4)))
        let lamNeg = Swift.max(R(Float(cfg.vespoLambdaNeg)), R(Float(1e-4)))
        let logLow = R(-18.420680743952367)  // math.log(1e-8)
        let betaD = cfg.beta
        let useKL = inp.refLogps != nil
        let bias = cfg.useBiasCorrectionKL
        let sequence = cfg.importanceSamplingLevel == .sequence
        let offPolicy = cfg.offPolicyMaskThreshold != nil
        let offThreshold = R(cfg.offPolicyMaskThreshold ?? 0)
        let floatMax = R.greatestFiniteMagnitude
        let thr = entropyThreshold, maskAll0 = entropyMaskAll0

        let linearInLp = lossType == .cispo || lossType == .vespo
        // Issue-11 options (PolicyLoss+Extras.swift).
        let seqToken = cfg.importanceSamplingLevel == .sequenceToken
        let gmpo = lossType == .gmpo
        let gmpoLow = R(cfg.epsilon), gmpoHigh = R(cfg.resolvedEpsilonHigh)
        let useDualClip = cfg.clipRatioC != nil
        let clipC = R(cfg.clipRatioC ?? 0)
        let klEstimator = cfg.klEstimator
        let klClamp = cfg.klClampValue(R.self)
        let defaultKL = klEstimator == .k3 && klClamp == nil
        /// (kl, d kl / d lp) of one token at d = ref - lp.
        @inline(__always) func klToken(_ d: R) -> (R, R) {
            if defaultKL {
                let (em1, kl0) = R.expm1AndKL(d)
                return (kl0, -em1)
            }
            let e = klEstimator.evaluate(d, clamp: klClamp)
            return (e.value, e.grad)
        }
        // The per-token policy loss l(r, A, lp), d l / d r and d l / d lp (detached factors held
        // fixed) and the metric indicators, exactly as TRL's torch code evaluates them.
        @inline(__always) func policyToken(_ a: R, _ r: R, _ lp: R, _ phiPos: R, _ phiNeg: R) -> PolicyToken<R> {
            var t = PolicyToken<R>()
            switch lossType {
            case .grpo, .bnpo, .drGRPO, .dapo, .luspo:
                var c1 = r, dc1: R = 1
                // torch.clamp passes the gradient only strictly inside its bounds.
                if useDelta && !(r < delta) { c1 = r.isNaN ? r : delta; dc1 = 0 }
                let c2 = Swift.min(Swift.max(r, lo), hi)
                let dc2: R = (r > lo && r < hi) ? 1 : 0
                let v1 = c1 * a, v2 = c2 * a
                var g: R
                // torch.min sends half of the gradient to each side of a tie.
                if v1.isNaN || v2.isNaN { t.l = .nan; g = .nan }
                else if v1 < v2 { t.l = -v1; g = a * dc1 }
                else if v1 > v2 { t.l = -v2; g = a * dc2 }
                else { t.l = -v1; g = a * (dc1 + dc2) / 2 }
                if useDualClip { t.dualClipped = PolicyLoss.dualClip(&t.l, &g, a: a, c: clipC) }
                t.dldr = -g
                t.low = c1 < lo && a < 0
                t.high = c1 > hi && a > 0
            case .cispo:
                let cr = r.isNaN ? r : Swift.min(r, epsH)
                t.l = -cr * a * lp
                t.dldlp = -cr * a
                t.cispoClipped = r > epsH && a > 0
            case .sapo:
                let tau = a > 0 ? tauPos : tauNeg
                let sg = 1 / (1 + R.exp(-(tau * (r - 1))))
                t.l = -(sg * 4 / tau) * a
                t.dldr = -4 * sg * (1 - sg) * a
            case .vespo:
                t.phi = a >= 0 ? phiPos : phiNeg
                t.l = -t.phi * a * lp
                t.dldlp = -t.phi * a
            case .gmpo:
                break  // row-level: handled in the row loop (gmpoToken)
            }
            return t
        }

        var stats = [Double](repeating: 0, count: B * RowStat.count)
        // Row-shaped metric indicators (clip low/high, cispo, phi) per row, TRL's (B,1) case.
        var rowInd = [Double](repeating: 0, count: B * 4)

        // The SIMD fast paths (PolicyLoss+Fast.swift) cover the most common configurations for
        // float32, bfloat16 and float16 inputs.
        let fastIn = FastPolicyLoss.Inputs(inp, grad: grad.flatMap { UnsafeMutableRawPointer($0.baseAddress) },
                                           gradH: gradEntropies.flatMap { UnsafeMutableRawPointer($0.baseAddress) })
        let fastKind = lossType.isClipped ? 0 : lossType == .cispo ? 1 : lossType == .sapo ? 2 : -1
        // Options outside TRL's configuration (KL estimators other than k3, KL clamp, dual clip,
        // GMPO, sequence_token) are not implemented by the SIMD paths: scalar path.
        let scalarOnly = cfg.needsScalarPath
        let fast = fastIn != nil && T > 0 && !sequence && fastKind >= 0 && !advPerToken
            && !isPerToken && !scalarOnly
        let fastParams = FastPolicyLoss.Params(
            lo: Float(1.0 - cfg.epsilon), hi: Float(1.0 + cfg.resolvedEpsilonHigh),
            delta: Float(cfg.delta ?? 0), useDelta: useDelta, beta: Float(cfg.beta), bias: bias,
            useKL: useKL, kind: fastKind, epsH: Float(cfg.resolvedEpsilonHigh),
            tauPos: Float(cfg.sapoTemperaturePos), tauNeg: Float(cfg.sapoTemperatureNeg))
        let gate = FastPolicyLoss.EntropyGate(
            on: useEntropyMask, all0: entropyMaskAll0, thr: fastIn != nil ? Float(entropyThreshold) : 0)

        try stats.withUnsafeMutableBufferPointer { (st) throws(GRPOError) in
        try rowInd.withUnsafeMutableBufferPointer { (ind) throws(GRPOError) in
        try rowLen.withUnsafeBufferPointer { (rowLen) throws(GRPOError) in
            try Parallel.forEachChunk(count: B, chunkSize: rowsPerChunk, dynamic: true) { _, rows in
                for i in rows {
                    let base = i * T
                    let L = rowLen[i]
                    let invL = 1 / Double(Swift.max(L, 1))
                    let w = rowWeight(L)
                    let aRow: R = advPerToken ? 0 : inp.advantages.value(i, as: R.self)

                    // Row statistics.
                    var slr = 0.0, sv = 0.0, skl = 0.0
                    var gmpoSum = 0.0, gmpoCount = 0  // GMPO: sum / count of clipped log-ratios (seq_mask)
                    if sequence || seqToken || lossType == .vespo || offPolicy || gmpo {
                        for t in 0..<T where mask[base + t] != 0 {
                            let lp = inp.logps[base + t].real
                            let lr: R = inp.oldLogps.map { lp - $0[base + t].real } ?? 0
                            slr += Double(lr)
                            if lossType == .vespo {
                                sv += Double(Swift.min(Swift.max(lr, -20), 20))
                                if isPerToken, let isr = inp.importanceSamplingRatio {
                                    let li = R.log(isr.value(base + t, as: R.self))
                                    sv += Double(Swift.min(Swift.max(li, logLow), 20))
                                }
                            }
                            if gmpo {
                                let keep = !useEntropyMask
                                    || (!maskAll0 && (inp.entropies?[base + t].real ?? 0) >= thr)
                                if keep {
                                    let c = PolicyLoss.gmpoToken(lr, a: aRow, epsLow: gmpoLow, epsHigh: gmpoHigh)
                                    gmpoSum += Double(c.value)
                                    gmpoCount += 1
                                }
                            }
                            if offPolicy {
                                let s = inp.samplingLogps ?? inp.oldLogps
                                var d: R = s.map { $0[base + t].real - lp } ?? 0
                                if d.isNaN { d = 0 } else if d.isInfinite { d = d > 0 ? floatMax : -floatMax }
                                skl += Double(d)
                            }
                        }
                    }
                    let rSeq = R.exp(R(slr * invL))
                    // GMPO: the row's geometric-mean ratio and d (row loss) / d (clipped log-ratio),
                    // in units of the row weight w (= 1 / (L B GA)).
                    let gmpoCoef = gmpo ? R.exp(R(gmpoSum / Double(Swift.max(gmpoCount, 1)))) : 0
                    let gmpoGrad = gmpo ? R(Double(L) * Double(-gmpoCoef * aRow) / Double(Swift.max(gmpoCount, 1))) : 0
                    let lowKL = R(skl * invL) <= offThreshold
                    // vespo weights for A >= 0 and A < 0.
                    var phiPos = R(0), phiNeg = R(0)
                    if lossType == .vespo {
                        if !isPerToken, let isr = inp.importanceSamplingRatio {  // T == 1
                            let li = R.log(isr.value(i, as: R.self))
                            sv += Double(Swift.min(Swift.max(li, logLow), 20))
                        }
                        let logw = Swift.min(Swift.max(R(sv), logLow), 20)
                        let wv = R.exp(logw)
                        phiPos = R.exp(lamPos + kPos * logw - lamPos * wv)
                        phiNeg = R.exp(lamNeg + kNeg * logw - lamNeg * wv)
                        if !phiPos.isFinite { phiPos = 0 }
                        if !phiNeg.isFinite { phiNeg = 0 }
                    }
                    let isrRow: R = (!isPerToken && lossType != .vespo)
                        ? (inp.importanceSamplingRatio.map { $0.value(i, as: R.self) } ?? 1) : 1
                    // float32 SIMD path for token-level rows (PolicyLoss+Fast.swift).
                    let keepRow = !offPolicy || advPerToken || aRow >= 0 || lowKL
                    if fast, let fastIn {
                        let sums = fastIn.row(
                            base: base, T: T, a: Float(aRow), f: Float(keepRow ? isrRow : 0), w: w,
                            p: fastParams, gate: gate, gradHValue: Float(entropyGrad))
                        let o = i * RowStat.count
                        st[o + RowStat.policy] = sums.policy
                        st[o + RowStat.kl] = sums.kl
                        st[o + RowStat.entropy] = sums.entropy
                        st[o + RowStat.entropyEff] = sums.entropyEff
                        st[o + RowStat.low] = sums.low
                        st[o + RowStat.high] = sums.high
                        st[o + RowStat.region] = sums.region
                        st[o + RowStat.cispo] = sums.cispo
                        st[o + RowStat.dropped] = !keepRow && L > 0 ? 1 : 0
                        continue
                    }

                    // With one advantage per row, the policy factors of a sequence-level ratio
                    // (or vespo's row weight) are the same for every token of the row.
                    let rowPolicy: PolicyToken<R>? =
                        (!advPerToken && (sequence || lossType == .vespo)) ? policyToken(aRow, rSeq, 1, phiPos, phiNeg) : nil
                    let needTokenRatio = !sequence && !seqToken && !gmpo && (lossType != .vespo || (useKL && bias))

                    var pol = 0.0, klSum = 0.0, entSum = 0.0, entEff = 0.0
                    var nLow = 0.0, nHigh = 0.0, nRegion = 0.0, nCispo = 0.0, phiSum = 0.0
                    var nDual = 0.0
                    var dropped = 0.0
                    var sRow = 0.0  // d loss / d r_i (sequence level)

                    // float32 SIMD path for such rows (PolicyLoss+Fast.swift).
                    if let fastIn, T > 0, let pc = rowPolicy, !scalarOnly,
                       !isPerToken || lossType == .vespo, !useKL || !bias || sequence {
                        var f = isrRow
                        if offPolicy && !(aRow >= 0 || lowKL) { f = 0; dropped = L > 0 ? 1 : 0 }
                        let sums = fastIn.rowConstant(
                            base: base, T: T, w: w,
                            lC: Float(linearInLp ? 0 : f * pc.l), lpCoef: Float(linearInLp ? f * pc.l : 0),
                            gDirect: Float(f * pc.dldlp), beta: Float(betaD), useKL: useKL, bias: bias,
                            r: Float(rSeq), gate: gate, gradHValue: Float(entropyGrad))
                        let n = Double(L)
                        pol = sums.policy; klSum = sums.kl; entSum = sums.entropy; entEff = sums.entropyEff
                        nLow = pc.low ? n : 0; nHigh = pc.high ? n : 0; nRegion = (pc.low || pc.high) ? n : 0
                        nCispo = pc.cispoClipped ? n : 0
                        phiSum = lossType == .vespo ? n * Double(pc.phi) : 0
                        if sequence {
                            sRow = Double(effLen[i]) * Double(f * pc.dldr) + (bias && useKL ? betaD * sums.klRaw : 0)
                        }
                    } else {

                    for t in 0..<T {
                        let k = base + t
                        if mask[k] == 0 {
                            grad?[k] = 0
                            gradEntropies?[k] = 0
                            continue
                        }
                        let lp = inp.logps[k].real
                        let a: R = advPerToken ? inp.advantages.value(k, as: R.self) : aRow
                        let lr: R = inp.oldLogps.map { lp - $0[k].real } ?? 0
                        let r: R = sequence || seqToken ? rSeq : (needTokenRatio ? R.exp(lr) : 1)

                        // Multiplier of the policy term: off-policy, entropy mask, IS ratio.
                        var f = isrRow
                        if isPerToken && lossType != .vespo, let isr = inp.importanceSamplingRatio {
                            f = isr.value(k, as: R.self)
                        }
                        if offPolicy && !(a >= 0 || lowKL) { f = 0; dropped = 1 }
                        var inEntropyMask = true
                        if useEntropyMask {
                            let e = inp.entropies?[k].real ?? 0
                            inEntropyMask = !maskAll0 && e >= thr
                            if !inEntropyMask { f = 0 }
                        }
                        if let ent = inp.entropies {
                            let e = Double(ent[k].real)
                            entSum += e
                            if inEntropyMask { entEff += e }
                        }

                        // Row-constant policy factors are computed once per row (below the
                        // row statistics); cispo/vespo are linear in lp with a constant factor.
                        var pt: PolicyToken<R>
                        if gmpo {
                            // Row loss -coef A spread over the row's L tokens (the row weight divides
                            // by L); the entropy mask acts inside the geometric mean only.
                            let c = PolicyLoss.gmpoToken(lr, a: a, epsLow: gmpoLow, epsHigh: gmpoHigh)
                            pt = PolicyToken(l: -gmpoCoef * a, dldlp: inEntropyMask ? gmpoGrad * c.grad : 0)
                            pt.low = c.low
                            pt.high = c.high
                            f = 1
                        } else {
                            pt = rowPolicy ?? policyToken(a, r, lp, phiPos, phiNeg)
                        }
                        let l: R = rowPolicy != nil && linearInLp ? pt.l * lp : pt.l
                        let dldr = pt.dldr, dldlp = pt.dldlp
                        if pt.low { nLow += 1 }
                        if pt.high { nHigh += 1 }
                        if pt.low || pt.high { nRegion += 1 }
                        if pt.cispoClipped { nCispo += 1 }
                        if pt.dualClipped { nDual += 1 }
                        if lossType == .vespo { phiSum += Double(pt.phi) }
                        pol += Double(f * l)
                        var gTok: Double
                        if sequence {
                            gTok = Double(f * dldlp)
                            sRow += Double(f * dldr)
                        } else {
                            gTok = Double(f * (dldr * r + dldlp))
                        }

                        if useKL, let ref = inp.refLogps {
                            let d = ref[k].real - lp
                            let (kl0, dkl0) = klToken(d)
                            var kl = kl0
                            var dkl = dkl0
                            if bias {
                                if sequence {
                                    dkl = dkl * r
                                    sRow += betaD * Double(kl)  // coefficient of r_i
                                } else {
                                    dkl = dkl * r + kl * r
                                }
                                kl = kl * r
                            }
                            klSum += Double(kl)
                            gTok += betaD * Double(dkl)
                        }
                        grad?[k] = R(w * gTok)
                        if inEntropyMask { gradEntropies?[k] = R(entropyGrad) } else { gradEntropies?[k] = 0 }
                    }
                    }
                    // Sequence level: d r_i / d lp_t = r_i m_t / max(L_i, 1).
                    if sequence, sRow != 0, let g = grad {
                        let c = w * sRow * Double(rSeq) * invL
                        for t in 0..<T where mask[base + t] != 0 {
                            g[base + t] = R(Double(g[base + t]) + c)
                        }
                    }

                    let o = i * RowStat.count
                    st[o + RowStat.policy] = pol
                    st[o + RowStat.kl] = klSum
                    st[o + RowStat.entropy] = entSum
                    st[o + RowStat.entropyEff] = entEff
                    st[o + RowStat.low] = nLow
                    st[o + RowStat.high] = nHigh
                    st[o + RowStat.region] = nRegion
                    st[o + RowStat.cispo] = nCispo
                    st[o + RowStat.phi] = phiSum
                    st[o + RowStat.dropped] = dropped
                    st[o + RowStat.dual] = nDual
                    // TRL's (B,1)-shaped metrics: the row's own ratio and advantage, all rows.
                    if !advPerToken {
                        var c1 = rSeq
                        if useDelta && lossType.isClipped && !(rSeq <= delta) { c1 = delta }
                        ind[i * 4 + 0] = (c1 < lo && aRow < 0) ? 1 : 0
                        ind[i * 4 + 1] = (c1 > hi && aRow > 0) ? 1 : 0
                        ind[i * 4 + 2] = (rSeq > epsH && aRow > 0) ? 1 : 0
                        ind[i * 4 + 3] = Double(aRow >= 0 ? phiPos : phiNeg)
                    }
                }
            }
        }}}

        // 4. Combine in row order.
        var m = PolicyLossMetrics()
        var polTerm = 0.0, klTerm = 0.0, klAll = 0.0, entAll = 0.0, entEffAll = 0.0
        var low = 0.0, high = 0.0, region = 0.0, cis = 0.0, phi = 0.0, dropped = 0.0, dual = 0.0
        var lowMin = Double.nan, highMax = Double.nan
        for i in 0..<B {
            let o = i * RowStat.count
            let w = rowWeight(rowLen[i])
            polTerm += w * stats[o + RowStat.policy]
            klTerm += w * stats[o + RowStat.kl]
            klAll += stats[o + RowStat.kl]
            entAll += stats[o + RowStat.entropy]
            entEffAll += stats[o + RowStat.entropyEff]
            low += stats[o + RowStat.low]
            high += stats[o + RowStat.high]
            region += stats[o + RowStat.region]
            cis += stats[o + RowStat.cispo]
            phi += stats[o + RowStat.phi]
            dropped += stats[o + RowStat.dropped]
            dual += stats[o + RowStat.dual]
        }
        let tokens = Double(Swift.max(totalTokens, 1))
        m.policyTerm = polTerm
        m.klTerm = cfg.beta != 0 ? betaD * klTerm : 0
        m.entropyTerm = cfg.entropyCoef != 0 ? -cfg.entropyCoef * entEffAll / Double(Swift.max(totalEff, 1)) / ga : 0
        m.loss = m.policyTerm + m.klTerm + m.entropyTerm
        switch lossType {
        case .dapo, .cispo, .vespo: m.policyLoss = m.policyTerm + m.klTerm
        default: m.policyLoss = (m.policyTerm + m.klTerm) * ga
        }
        if useKL { m.kl = klAll / tokens }
        if inp.entropies != nil { m.entropy = entAll / tokens }
        m.numTokens = Double(totalTokens)
        m.numEntropyTokens = Double(totalEff)
        m.numOffPolicyDropped = dropped
        if useDualClip { m.pgClipfracLower = dual / tokens }
        let rowShaped = sequence && !advPerToken
        if lossType.isClipped || gmpo {
            if rowShaped {
                var l = 0.0, h = 0.0
                lowMin = .infinity; highMax = -.infinity
                for i in 0..<B {
                    let li = rowInd[i * 4], hi = rowInd[i * 4 + 1]
                    l += li; h += hi
                    lowMin = Swift.min(lowMin, li); highMax = Swift.max(highMax, hi)
                }
                var reg = 0.0
                for i in 0..<B where rowInd[i * 4] != 0 || rowInd[i * 4 + 1] != 0 { reg += 1 }
                m.clipRatioLowMean = l / bD
                m.clipRatioHighMean = h / bD
                m.clipRatioRegionMean = reg / bD
            } else {
                m.clipRatioLowMean = low / tokens
                m.clipRatioHighMean = high / tokens
                m.clipRatioRegionMean = region / tokens
                for i in 0..<B where rowLen[i] > 0 {
                    let o = i * RowStat.count, L = Double(rowLen[i])
                    let li = stats[o + RowStat.low] / L, hi = stats[o + RowStat.high] / L
                    lowMin = lowMin.isNaN ? li : Swift.min(lowMin, li)
                    highMax = highMax.isNaN ? hi : Swift.max(highMax, hi)
                }
            }
            m.clipRatioLowMin = lowMin
            m.clipRatioHighMax = highMax
        } else if lossType == .cispo {
            if rowShaped {
                var c = 0.0
                for i in 0..<B { c += rowInd[i * 4 + 2] }
                m.cispoClipRatio = c / bD
            } else {
                m.cispoClipRatio = cis / tokens
            }
        } else if lossType == .vespo {
            if !advPerToken {
                var p = 0.0
                for i in 0..<B { p += rowInd[i * 4 + 3] }
                m.vespoPhiSeqMean = p / bD
            } else {
                m.vespoPhiSeqMean = phi / tokens
            }
        }
        return m
    }

    /// The k-th smallest value (0-based) of NaN-free `v`; afterwards v[..<k] <= v[k] <= v[(k+1)...]
    /// (quickselect with a median-of-three pivot, Hoare partition).
    static func select(_ v: inout [Float], _ k: Int) -> Float {
        var lo = 0, hi = v.count - 1
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            if v[mid] < v[lo] { v.swapAt(mid, lo) }
            if v[hi] < v[lo] { v.swapAt(hi, lo) }
            if v[hi] < v[mid] { v.swapAt(hi, mid) }
            let pivot = v[mid]
            var i = lo, j = hi
            while i <= j {
                while v[i] < pivot { i += 1 }
                while pivot < v[j] { j -= 1 }
                if i <= j { v.swapAt(i, j); i += 1; j -= 1 }
            }
            if k <= j { hi = j } else if k >= i { lo = i } else { return v[k] }
        }
        return v[k]
    }

    /// torch.quantile(values, q) with linear interpolation, reproducing torch 2.x on CPU
    /// bit for bit (checked against it on random inputs): q is rounded to float32, the rank
    /// q (n - 1) is formed in double, the weight rounded to float32, and the lerp is fused:
    /// a + w (b - a) for w < 0.5, else b - (b - a)(1 - w). nil when `values` is empty; NaN
    /// when a value is NaN (torch propagates it).
    static func torchQuantile(_ values: inout [Float], _ q: Float) -> Float? {
        guard !values.isEmpty else { return nil }
        if values.contains(where: { $0.isNaN }) { return .nan }
        let rank = Double(q) * Double(values.count - 1)
        let below = Swift.max(0, Swift.min(values.count - 1, Int(rank)))
        let above = Swift.max(0, Swift.min(values.count - 1, Int(rank.rounded(.up))))
        let weight = Float(rank - Double(below))
        // The two order statistics by selection (O(n)), not a full sort.
        let a = select(&values, below)
        var b = a
        if above > below {
            b = values[above]
            for j in (below + 1)..<values.count where values[j] < b { b = values[j] }
        }
        let d = b - a
        return Swift.abs(weight) < 0.5 ? a.addingProduct(weight, d) : b.addingProduct(-d, 1 - weight)
    }
}
