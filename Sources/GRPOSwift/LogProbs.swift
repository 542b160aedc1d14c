// Per-token log-probabilities and entropy from logits (TRL 1.16's `selective_log_softmax`
// and `entropy_from_logits`), forward and backward.
//
// Maths, per row i with logits x (V), target y, temperature tau:
//   z = x / tau,  lse = logsumexp(z),  lp = z[y] - lse,  H = lse - sum_v p_v z_v,  p = softmax(z)
//   d lp / d x_v = (1[v = y] - p_v) / tau,    d H / d x_v = -p_v (log p_v + H) / tau.
// Rows that are not scored (target < 0, e.g. TRL's label -100, or row_mask == 0) give
// lp = 0 and H = 0 and a zero gradient: TRL masks both outputs of such positions with
// `masked_fill(~mask, 0)`, so no gradient flows through them. A target >= V is an error.
//
// Forward: one streaming pass per row over blocks of `blockSize` logits (an L1-resident
// block is read twice: its max, then exp and sums), folding each block into an online
// log-sum-exp: m (running max of the raw logits), d = (x - m) / tau, s = sum e^d,
// t = sum e^d d; then lp = (x_y - m) / tau - log s and H = log s - t / s. Subtracting the
// max BEFORE scaling by 1/tau, and tracking d instead of z, keep lp and H accurate when
// |x| ~ 1e4 (x / tau rounded first carries ulp(1e4) ~ 1e-3 errors; TRL's float32 path
// does). The saved logsumexp is Double (m / tau + log s without rounding); the backward
// splits it again into a Float reference logit near m and a small remainder.
// exp is the SIMD polynomial of SIMDMath.swift; all sums are Float, lane sums in a fixed
// order. Double logits use separate scalar kernels with libm exp/log and Double sums.
//
// Backward: one pass per row writing p_v (cA + cB lp_v) (+ gl / tau at the target), with
// cA = -(gl + gh H) / tau and cB = -gh / tau; the target element is computed from the
// original logit first, so the gradient may overwrite the logits (the in-place option).
// Measured (2 threads, 2048 x 32768 float32, fwd + bwd): ~0.22 s against TRL's torch path
// at 8.8 s in the same run (python/benchmarks/bench_logprobs.py).
//
// Rows are split into fixed chunks of `rowsPerChunk` (Parallel.forEachChunk); each row is
// computed by one thread in a fixed order, so results are bitwise identical for any thread
// count. Non-finite logits give NaN/inf outputs as torch does (a row of all -inf: NaN).
#if canImport(Glibc)
import Glibc
#endif

public enum LogProbs {
    /// Logits per block of the online log-sum-exp (8 KiB of Float: stays in L1 between the
    /// max pass and the exp pass).
    static let blockSize = 2048
    /// Rows per parallel chunk.
    static let rowsPerChunk = 8

    // MARK: validation

    static func validate(rows: Int, vocab: Int, logitsCount: Int, targets: UnsafeBufferPointer<Int64>,
                         rowMask: UnsafeBufferPointer<UInt8>?, temperature: Double) throws(GRPOError) {
        guard rows >= 0 else { throw GRPOError(.shape, "rows must be >= 0, got \(rows)") }
        guard vocab >= 1 else { throw GRPOError(.shape, "vocab size must be >= 1, got \(vocab)") }
        let total = try checkedProduct(rows, vocab, what: "logits")
        guard logitsCount >= total else {
            throw GRPOError(.shape, "logits holds \(logitsCount) elements, expected \(rows) x \(vocab) = \(total)")
        }
        guard temperature > 0, temperature.isFinite else {
            throw GRPOError(.value, "temperature must be a positive finite number, got \(temperature)")
        }
        guard targets.count >= rows else {
            throw GRPOError(.shape, "targets holds \(targets.count) elements, expected \(rows)")
        }
        if let rowMask, rowMask.count < rows {
            throw GRPOError(.shape, "row_mask holds \(rowMask.count) elements, expected \(rows)")
        }
        for i in 0..<rows where targets[i] >= Int64(vocab) {
            throw GRPOError(.value,
                "targets[\(i)] = \(targets[i]) is out of range for a vocabulary of \(vocab) (negative targets are not scored)")
        }
    }

    @inline(__always)
    static func scored(_ i: Int, _ targets: UnsafeBufferPointer<Int64>, _ mask: UnsafeBufferPointer<UInt8>?) -> Bool {
        targets[i] >= 0 && (mask.map { $0[i] != 0 } ?? true)
    }

    // MARK: Float-compute row kernels

    /// Online statistics of one row, in logit space: m = max x (NOT divided by tau),
    /// s = sum e^d, t = sum e^d d with d = (x - m) / tau. Subtracting before scaling keeps d
    /// exact-ish when |x| ~ 1e4 (x / tau rounded first would carry ulp(1e4) ~ 1e-3 errors).
    @inline(__always)
    static func rowStats<E: LogitElement>(_ row: UnsafePointer<E>, _ v: Int, _ invT: Float)
        -> (m: Float, s: Float, t: Float)
    {
        var m = -Float.infinity, s: Float = 0, t: Float = 0
        let iv = SIMD8<Float>(repeating: invT)
        var start = 0
        while start < v {
            let end = Swift.min(v, start + blockSize)
            // Pass 1: block max of x (tau > 0, so max z = max x / tau). NaN logits are
            // caught in pass 2 (they make s NaN).
            var vm = SIMD8<Float>(repeating: -.infinity)
            var j = start
            while j + 8 <= end {
                let x = E.load8(row + j)
                vm = vm.replacing(with: x, where: vm .< x)  // vmaxps (pointwiseMax is scalar)
                j += 8
            }
            var bm = laneMax(vm)
            while j < end {
                let x = row[j].floatValue
                if x > bm { bm = x }
                j += 1
            }
            let newM = Swift.max(m, bm)
            if newM == -.infinity { start = end; continue }  // block (and row so far) all -inf
            if newM > m && s > 0 {
                let d = (m - newM) * invT
                let c = vexp(d)
                t = c * (t + d * s)
                s = c * s
            }
            m = newM
            // Pass 2: d = z - m (floored at -128 so that a -inf logit gives e = 0 and
            // e d = 0, not NaN; NaN compares false and propagates), e = exp(d).
            let negM = SIMD8<Float>(repeating: -m)
            let floor = SIMD8<Float>(repeating: -128)
            var vs = SIMD8<Float>(), vt = SIMD8<Float>()
            j = start
            while j + 8 <= end {
                // z rounded first, then z - m: the max element gives exactly e = 1, so s >= 1
                // and lp = (z_y - m) - log s <= 0 in floating point too.
                var d = (E.load8(row + j) + negM) * iv
                d.replace(with: floor, where: d .< floor)
                let e = simdExp(d)
                vs += e
                vt = vt.addingProduct(e, d)
                j += 8
            }
            if j < end {
                var x = SIMD8<Float>(repeating: -.infinity)
                for k in 0..<(end - j) { x[k] = row[j + k].floatValue }
                var d = (x + negM) * iv
                d.replace(with: floor, where: d .< floor)
                let e = simdExp(d)
                vs += e
                vt = vt.addingProduct(e, d)
            }
            s += laneSum(vs)
            t += laneSum(vt)
            start = end
        }
        return (m, s, t)
    }
}

extension LogProbs {
    // MARK: forward

    /// Log-probs of `targets` and entropies of the rows of `logits` (rows x vocab, row-major),
    /// in Float. `entropy` and `logSumExp` are optional outputs (logSumExp of z = x / tau, in
    /// Double so that it keeps the Float max and log-sum exactly: pass it to `backward` to save
    /// a pass over the logits). Unscored rows (target < 0 or rowMask 0)
    /// get lp = 0, H = 0 and logSumExp = 0.
    public static func forward<E: LogitElement>(
        logits: UnsafeBufferPointer<E>, rows: Int, vocab: Int,
        targets: UnsafeBufferPointer<Int64>, rowMask: UnsafeBufferPointer<UInt8>? = nil,
        temperature: Double = 1,
        logProbs: UnsafeMutableBufferPointer<Float>, entropy: UnsafeMutableBufferPointer<Float>?,
        logSumExp: UnsafeMutableBufferPointer<Double>?
    ) throws(GRPOError) {
        try validate(rows: rows, vocab: vocab, logitsCount: logits.count, targets: targets,
                     rowMask: rowMask, temperature: temperature)
        try checkOutputs(rows, logProbs.count, entropy?.count, logSumExp?.count)
        guard rows > 0, let base = logits.baseAddress else { return }
        let invT = Float(1 / temperature)
        try Parallel.forEachChunk(count: rows, chunkSize: rowsPerChunk) { _, range in
            for i in range {
                guard scored(i, targets, rowMask) else {
                    logProbs[i] = 0
                    entropy?[i] = 0
                    logSumExp?[i] = 0
                    continue
                }
                let row = base + i * vocab
                let st = rowStats(row, vocab, invT)
                let logS = logf(st.s)
                // (z_y - m) - log s: no rounding of lse to Float when |z| is large.
                logProbs[i] = (row[Int(targets[i])].floatValue - st.m) * invT - logS
                entropy?[i] = logS - st.t / st.s
                logSumExp?[i] = Double(st.m) * Double(invT) + Double(logS)
            }
        }
    }

    static func checkOutputs(_ rows: Int, _ lp: Int, _ h: Int?, _ lse: Int?) throws(GRPOError) {
        guard lp >= rows else { throw GRPOError(.shape, "log_probs holds \(lp) elements, expected \(rows)") }
        if let h, h < rows { throw GRPOError(.shape, "entropy holds \(h) elements, expected \(rows)") }
        if let lse, lse < rows { throw GRPOError(.shape, "logsumexp holds \(lse) elements, expected \(rows)") }
    }

    /// Double logits: the same maths in Double with libm exp/log (for exact parity tests).
    public static func forward(
        logits: UnsafeBufferPointer<Double>, rows: Int, vocab: Int,
        targets: UnsafeBufferPointer<Int64>, rowMask: UnsafeBufferPointer<UInt8>? = nil,
        temperature: Double = 1,
        logProbs: UnsafeMutableBufferPointer<Double>, entropy: UnsafeMutableBufferPointer<Double>?,
        logSumExp: UnsafeMutableBufferPointer<Double>?
    ) throws(GRPOError) {
        try validate(rows: rows, vocab: vocab, logitsCount: logits.count, targets: targets,
                     rowMask: rowMask, temperature: temperature)
        try checkOutputs(rows, logProbs.count, entropy?.count, logSumExp?.count)
        guard rows > 0, let base = logits.baseAddress else { return }
        let invT = 1 / temperature
        try Parallel.forEachChunk(count: rows, chunkSize: rowsPerChunk) { _, range in
            for i in range {
                guard scored(i, targets, rowMask) else {
                    logProbs[i] = 0
                    entropy?[i] = 0
                    logSumExp?[i] = 0
                    continue
                }
                let st = rowStatsF64(base + i * vocab, vocab, invT)
                let logS = log(st.s)
                logProbs[i] = (base[i * vocab + Int(targets[i])] - st.m) * invT - logS
                entropy?[i] = logS - st.t / st.s
                logSumExp?[i] = st.m * invT + logS
            }
        }
    }

    /// Two-pass (max, then sums) statistics of one Double row; same meaning as rowStats.
    static func rowStatsF64(_ row: UnsafePointer<Double>, _ v: Int, _ invT: Double)
        -> (m: Double, s: Double, t: Double)
    {
        var mx = -Double.infinity
        var nan = false
        for j in 0..<v {
            let x = row[j]
            if x > mx { mx = x }
            if x.isNaN { nan = true }
        }
        if nan { return (.nan, .nan, .nan) }
        let m = mx
        if m == -.infinity { return (m, 0, 0) }
        var s = 0.0, t = 0.0
        for j in 0..<v {
            let d = (row[j] - m) * invT
            if d == -.infinity { continue }
            let e = exp(d)
            s += e
            t += e * d
        }
        return (m, s, t)
    }

    // MARK: backward

    /// Gradient of sum_i (gLp_i lp_i + gH_i H_i) with respect to the logits, written to
    /// `gradLogits` (rows x vocab) as G (Float, or the logits' own type). `gradLogits` may be
    /// the very memory of `logits` (same type: the in-place option, see `backwardInPlace`);
    /// otherwise it must not overlap it. `logSumExp` (from `forward`) saves a pass; nil
    /// recomputes it. `entropy` is required when `gradEntropy` is given (nil: recomputed).
    /// Missing gradLogProbs / gradEntropy count as zero. Unscored rows get a zero gradient.
    public static func backward<E: LogitElement, G: LogitElement>(
        logits: UnsafeBufferPointer<E>, rows: Int, vocab: Int,
        targets: UnsafeBufferPointer<Int64>, rowMask: UnsafeBufferPointer<UInt8>? = nil,
        temperature: Double = 1,
        logSumExp: UnsafeBufferPointer<Double>?, entropy: UnsafeBufferPointer<Float>?,
        gradLogProbs: UnsafeBufferPointer<Float>?, gradEntropy: UnsafeBufferPointer<Float>?,
        gradLogits: UnsafeMutableBufferPointer<G>
    ) throws(GRPOError) {
        try validate(rows: rows, vocab: vocab, logitsCount: logits.count, targets: targets,
                     rowMask: rowMask, temperature: temperature)
        try checkBackwardInputs(rows, vocab, gradLogits.count, logSumExp?.count, entropy?.count,
                                gradLogProbs?.count, gradEntropy?.count)
        guard rows > 0, let base = logits.baseAddress, let out = gradLogits.baseAddress else { return }
        let invT = Float(1 / temperature)
        let iv = SIMD8<Float>(repeating: invT)
        try Parallel.forEachChunk(count: rows, chunkSize: rowsPerChunk) { _, range in
            for i in range {
                let orow = out + i * vocab
                let gl = gradLogProbs?[i] ?? 0
                let gh = gradEntropy?[i] ?? 0
                guard scored(i, targets, rowMask), gl != 0 || gh != 0 else {
                    var j = 0
                    while j + 8 <= vocab { G.store8(SIMD8(), orow + j); j += 8 }
                    while j < vocab { orow[j] = G(roundingFloat: 0); j += 1 }
                    continue
                }
                let row = base + i * vocab
                // lp_v = (x_v - r) / tau - c for a reference logit r near the row max and
                // c = lse - r / tau (in Double): accurate for |x| ~ 1e4, as in the forward.
                var hi: Float, lo: Float, h: Float
                if let logSumExp, entropy != nil || gradEntropy == nil {
                    hi = Float(logSumExp[i] / Double(invT))
                    lo = Float(logSumExp[i] - Double(hi) * Double(invT))
                    h = entropy?[i] ?? 0
                } else {
                    let st = rowStats(row, vocab, invT)
                    let logS = logf(st.s)
                    hi = st.m
                    lo = logS
                    h = logS - st.t / st.s
                }
                // g_v = p_v (cA + cB lp_v) + 1[v=y] gl / tau, with cA = -(gl + gh H)/tau, cB = -gh/tau.
                let cA = -(gl + gh * h) * invT, cB = -gh * invT
                let y = Int(targets[i])
                // The target element, from the original logit (before an in-place overwrite).
                let lpy = (row[y].floatValue - hi) * invT - lo
                let gy = vexp(lpy) * (cA + cB * lpy) + gl * invT
                let va = SIMD8<Float>(repeating: cA), vb = SIMD8<Float>(repeating: cB)
                let negHi = SIMD8<Float>(repeating: -hi), vlo = SIMD8<Float>(repeating: lo)
                var j = 0
                let floor = SIMD8<Float>(repeating: -128)
                while j + 8 <= vocab {
                    // lp floored at -128 (p = 0 there): a -inf logit gives 0, not 0 * inf = NaN.
                    var lp = ((E.load8(row + j) + negHi) * iv) - vlo
                    lp = lp.replacing(with: floor, where: lp .< floor)
                    let p = simdExp(lp)
                    G.store8(p * va.addingProduct(vb, lp), orow + j)
                    j += 8
                }
                while j < vocab {
                    let lp = (row[j].floatValue - hi) * invT - lo
                    let p = vexp(lp)
                    orow[j] = G(roundingFloat: p == 0 ? 0 : p * (cA + cB * lp))
                    j += 1
                }
                orow[y] = G(roundingFloat: gy)
            }
        }
    }

    static func checkBackwardInputs(_ rows: Int, _ vocab: Int, _ grad: Int, _ lse: Int?, _ h: Int?,
                                    _ gl: Int?, _ gh: Int?) throws(GRPOError) {
        let total = try checkedProduct(rows, vocab, what: "grad_logits")
        guard grad >= total else {
            throw GRPOError(.shape, "grad_logits holds \(grad) elements, expected \(total)")
        }
        for (name, c) in [("logsumexp", lse), ("entropy", h), ("grad_log_probs", gl), ("grad_entropy", gh)] {
            if let c, c < rows { throw GRPOError(.shape, "\(name) holds \(c) elements, expected \(rows)") }
        }
    }

    /// `backward` writing the gradient over the logits themselves (saves a rows x vocab buffer).
    public static func backwardInPlace<E: LogitElement>(
        logits: UnsafeMutableBufferPointer<E>, rows: Int, vocab: Int,
        targets: UnsafeBufferPointer<Int64>, rowMask: UnsafeBufferPointer<UInt8>? = nil,
        temperature: Double = 1,
        logSumExp: UnsafeBufferPointer<Double>?, entropy: UnsafeBufferPointer<Float>?,
        gradLogProbs: UnsafeBufferPointer<Float>?, gradEntropy: UnsafeBufferPointer<Float>?
    ) throws(GRPOError) {
        try backward(logits: UnsafeBufferPointer(logits), rows: rows, vocab: vocab, targets: targets,
                     rowMask: rowMask, temperature: temperature, logSumExp: logSumExp, entropy: entropy,
                     gradLogProbs: gradLogProbs, gradEntropy: gradEntropy, gradLogits: logits)
    }

    /// Double backward (scalar, libm exp): same contract as the Float version.
    public static func backward(
        logits: UnsafeBufferPointer<Double>, rows: Int, vocab: Int,
        targets: UnsafeBufferPointer<Int64>, rowMask: UnsafeBufferPointer<UInt8>? = nil,
        temperature: Double = 1,
        logSumExp: UnsafeBufferPointer<Double>?, entropy: UnsafeBufferPointer<Double>?,
        gradLogProbs: UnsafeBufferPointer<Double>?, gradEntropy: UnsafeBufferPointer<Double>?,
        gradLogits: UnsafeMutableBufferPointer<Double>
    ) throws(GRPOError) {
        try validate(rows: rows, vocab: vocab, logitsCount: logits.count, targets: targets,
                     rowMask: rowMask, temperature: temperature)
        try checkBackwardInputs(rows, vocab, gradLogits.count, logSumExp?.count, entropy?.count,
                                gradLogProbs?.count, gradEntropy?.count)
        guard rows > 0, let base = logits.baseAddress, let out = gradLogits.baseAddress else { return }
        let invT = 1 / temperature
        try Parallel.forEachChunk(count: rows, chunkSize: rowsPerChunk) { _, range in
            for i in range {
                let orow = out + i * vocab
                let gl = gradLogProbs?[i] ?? 0
                let gh = gradEntropy?[i] ?? 0
                guard scored(i, targets, rowMask), gl != 0 || gh != 0 else {
                    for j in 0..<vocab { orow[j] = 0 }
                    continue
                }
                let row = base + i * vocab
                var lse: Double, h: Double
                if let logSumExp, entropy != nil || gradEntropy == nil {
                    lse = logSumExp[i]
                    h = entropy?[i] ?? 0
                } else {
                    let st = rowStatsF64(row, vocab, invT)
                    let logS = log(st.s)
                    lse = st.m * invT + logS
                    h = logS - st.t / st.s
                }
                let cA = -(gl + gh * h) * invT, cB = -gh * invT
                let y = Int(targets[i])
                let lpy = row[y] * invT - lse
                let gy = exp(lpy) * (cA + cB * lpy) + gl * invT
                for j in 0..<vocab {
                    let lp = row[j] * invT - lse
                    let p = exp(lp)
                    orow[j] = p == 0 ? 0 : p * (cA + cB * lp)
                }
                orow[y] = gy
            }
        }
    }
}

// MARK: Array convenience API (Swift users)

/// Per-row outputs of `LogProbs.compute`.
public struct LogProbsResult<T: Sendable>: Sendable {
    public var logProbs: [T]
    public var entropy: [T]
    /// Always Double (see `LogProbs.forward`).
    public var logSumExp: [Double]
}

extension LogProbs {
    /// Log-probs and entropy of `logits` ((targets.count) x vocab, row-major) in Float.
    public static func compute<E: LogitElement>(
        logits: [E], vocab: Int, targets: [Int64], rowMask: [UInt8]? = nil, temperature: Double = 1
    ) throws(GRPOError) -> LogProbsResult<Float> {
        let rows = targets.count
        var lp = [Float](repeating: 0, count: rows), h = lp
        var lse = [Double](repeating: 0, count: rows)
        let r: Result<Void, GRPOError> = logits.withUnsafeBufferPointer { x in
            targets.withUnsafeBufferPointer { t in
                withOptionalBuffer(rowMask) { m in
                    lp.withUnsafeMutableBufferPointer { lp in
                        h.withUnsafeMutableBufferPointer { h in
                            lse.withUnsafeMutableBufferPointer { lse in
                                Result { () throws(GRPOError) in
                                    try forward(logits: x, rows: rows, vocab: vocab, targets: t, rowMask: m,
                                                temperature: temperature, logProbs: lp, entropy: h, logSumExp: lse)
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

    /// Double version of `compute`.
    public static func compute(
        logits: [Double], vocab: Int, targets: [Int64], rowMask: [UInt8]? = nil, temperature: Double = 1
    ) throws(GRPOError) -> LogProbsResult<Double> {
        let rows = targets.count
        var lp = [Double](repeating: 0, count: rows), h = lp, lse = lp
        let r: Result<Void, GRPOError> = logits.withUnsafeBufferPointer { x in
            targets.withUnsafeBufferPointer { t in
                withOptionalBuffer(rowMask) { m in
                    lp.withUnsafeMutableBufferPointer { lp in
                        h.withUnsafeMutableBufferPointer { h in
                            lse.withUnsafeMutableBufferPointer { lse in
                                Result { () throws(GRPOError) in
                                    try forward(logits: x, rows: rows, vocab: vocab, targets: t, rowMask: m,
                                                temperature: temperature, logProbs: lp, entropy: h, logSumExp: lse)
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

    /// Gradient of sum(gradLogProbs * lp + gradEntropy * H) w.r.t. Float-typed logits, as Float.
    public static func gradient<E: LogitElement>(
        logits: [E], vocab: Int, targets: [Int64], rowMask: [UInt8]? = nil, temperature: Double = 1,
        gradLogProbs: [Float]?, gradEntropy: [Float]?
    ) throws(GRPOError) -> [Float] {
        let rows = targets.count
        let total = try checkedProduct(rows, vocab, what: "grad_logits")
        var g = [Float](repeating: 0, count: total)
        let r: Result<Void, GRPOError> = logits.withUnsafeBufferPointer { x in
            targets.withUnsafeBufferPointer { t in
                withOptionalBuffer(rowMask) { m in
                    withOptionalBuffer(gradLogProbs) { gl in
                        withOptionalBuffer(gradEntropy) { gh in
                            g.withUnsafeMutableBufferPointer { g in
                                Result { () throws(GRPOError) in
                                    try backward(logits: x, rows: rows, vocab: vocab, targets: t, rowMask: m,
                                                 temperature: temperature, logSumExp: nil, entropy: nil,
                                                 gradLogProbs: gl, gradEntropy: gh, gradLogits: g)
                                }
                            }
                        }
                    }
                }
            }
        }
        try r.get()
        return g
    }

    /// Double version of `gradient`.
    public static func gradient(
        logits: [Double], vocab: Int, targets: [Int64], rowMask: [UInt8]? = nil, temperature: Double = 1,
        gradLogProbs: [Double]?, gradEntropy: [Double]?
    ) throws(GRPOError) -> [Double] {
        let rows = targets.count
        let total = try checkedProduct(rows, vocab, what: "grad_logits")
        var g = [Double](repeating: 0, count: total)
        let r: Result<Void, GRPOError> = logits.withUnsafeBufferPointer { x in
            targets.withUnsafeBufferPointer { t in
                withOptionalBuffer(rowMask) { m in
                    withOptionalBuffer(gradLogProbs) { gl in
                        withOptionalBuffer(gradEntropy) { gh in
                            g.withUnsafeMutableBufferPointer { g in
                                Result { () throws(GRPOError) in
                                    try backward(logits: x, rows: rows, vocab: vocab, targets: t, rowMask: m,
                                                 temperature: temperature, logSumExp: nil, entropy: nil,
                                                 gradLogProbs: gl, gradEntropy: gh, gradLogits: g)
                                }
                            }
                        }
                    }
                }
            }
        }
        try r.get()
        return g
    }
}
// (withOptionalBuffer is defined in PolicyLoss.swift.)
