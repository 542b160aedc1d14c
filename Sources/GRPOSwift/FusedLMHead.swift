// The LM head fused with log-probs and entropy (TRL 1.16's `ChunkedLogProbFunction`):
// per-token log-probs and entropies of x = hidden W^T + bias without materialising the
// N x V logits, and the gradients w.r.t. hidden, W and bias.
//
// Maths (per row, over the vocabulary; c = final_logit_softcapping, tau = temperature):
//   y = x * logit_scale;  y <- c tanh(y / c) when c is set;  z = y / tau
//   lp = z[target] - lse(z),  H = lse(z) - sum_v p_v z_v
//   dL/dx_v = (gLp (1[v=t] - p_v) - gH p_v (log p_v + H)) / tau * (1 - tanh^2) * logit_scale
//   grad_hidden = G W,  grad_weight = G^T hidden,  grad_bias = column sums of G.
// Targets < 0 (TRL's label -100) are not scored: lp = H = 0 and no gradient, which is what
// TRL's fused forward gives after `masked_fill(~mask, 0)`. A target >= V is an error.
//
// Tiling. Forward: for each block of `tileRows` rows, for each `tileCols` slice of the
// vocabulary, one cblas_sgemm writes the logits tile into scratch and a fold turns each
// tile row into y (in place: scale and softcap applied, temperature not yet) and then into
// the row's online statistics (running max m of y, s = sum e^d, t = sum e^d d with
// d = (y - m) / tau, as in LogProbs.swift). Backward:
// vocabulary slices outermost (so the grad_weight slice and the weight slice stay hot while
// row blocks stream), recompute each tile, overwrite it with dL/dx, then
//   grad_hidden[rows] += G W[slice]   (sgemm, beta = 1)
//   grad_weight[slice] += G^T hidden[rows]   (sgemm, beta = 1, ONE fp32 buffer)
//   grad_bias[slice] += column sums of G (rows in order).
//
// Threading and determinism. Parallelism comes from Dispatch workers
// (Parallel.forEachChunk), each running SINGLE-threaded sgemm calls on fixed sub-blocks:
// `gemmRows` (256) tile rows (forward, backward logits + grad_hidden; the same task then folds its
// rows while they are in cache) or `gemmCols` (1024) vocabulary columns (grad_weight,
// grad_bias; 256 made every task re-pack the same hidden block, ~2x the packing work).
// The partition never depends on the thread count, every output element is always produced
// by a GEMM of the same shape and accumulated in the same order (vocabulary slices, then
// row blocks, in sequence), so results are bitwise identical for any thread count (tested
// with 1, 2, 3 threads and OpenBLAS's Haswell and SkylakeX kernels). OpenBLAS's own threading
// was measured and rejected: with its Haswell kernels, 1 vs 2 threads changed the rounding
// of ~5% of the elements of a 1024 x 4096 x 896 product. Throughput is not lost: on this
// 2-core Xeon (OpenBLAS 0.3.21, OPENBLAS_CORETYPE=SkylakeX, otherwise idle) single-threaded
// sgemm ran 104-122 GFLOP/s per core on 256 x 4096 x 896 blocks against 216-245 GFLOP/s for
// 2 OpenBLAS threads on 512-1024 x 4096 tiles; 128-row blocks were ~10% slower than 256.
//
// Tile sizes (defaults 1024 x 4096, measured): one plain 2048 x 32768 x 896 sgemm ran 288
// GFLOP/s with 2 threads; 1024 x 4096 tiles 245, 512 x 4096 235, 256 x 4096 216, 512 x 2048
// 223. Fused fwd + bwd at N=2048, H=896, V=32768 ran 1.1-1.3x the time of 4 plain sgemms
// in the same run (python/benchmarks/bench_logprobs.py; a shared, loaded machine).
// The scratch is tileRows x tileCols floats plus 4 floats per tile row: 16 MiB + 16 KiB with
// the defaults, independent of N and V (`scratchBytes`), mapped per call with mmap and
// returned with munmap. OpenBLAS keeps its own fixed per-thread packing buffers (allocated
// once by the library, not per call).
#if canImport(Glibc)
import Glibc
#endif
import CBLAS

/// Options of the fused LM head, named as in TRL.
public struct LMHeadConfig: Sendable {
    public var temperature: Double
    public var logitScale: Double
    /// Gemma-style final_logit_softcapping c: y -> c tanh(y / c). nil = off.
    public var finalLogitSoftcapping: Double?
    /// Rows / vocabulary columns per GEMM tile; 0 = the measured defaults.
    public var tileRows: Int
    public var tileCols: Int
    public init(temperature: Double = 1, logitScale: Double = 1, finalLogitSoftcapping: Double? = nil,
                tileRows: Int = 0, tileCols: Int = 0) {
        self.temperature = temperature
        self.logitScale = logitScale
        self.finalLogitSoftcapping = finalLogitSoftcapping
        self.tileRows = tileRows
        self.tileCols = tileCols
    }
}

public enum FusedLMHead {
    public static let defaultTileRows = 1024
    public static let defaultTileCols = 4096
    /// Upper bound on either tile dimension (keeps tile products far from overflow).
    public static let maxTileDim = 1 << 16
    /// Rows of a tile per parallel task: each task runs one single-threaded sgemm for its rows
    /// (and folds them). Fixed, so every output element is always computed by a GEMM of the
    /// same shape, whatever the thread count.
    public static let gemmRows = 256
    /// Vocabulary columns per parallel task of the grad_weight GEMM and bias column sums.
    public static let gemmCols = 1024

    struct Plan {
        let rows: Int, hidden: Int, vocab: Int
        let tileRows: Int, tileCols: Int
        let invT: Float, scale: Float, cap: Float?  // cap nil: no softcap
        /// Inputs are not Float (bfloat16): each row block of hidden and each vocabulary slice
        /// of weight and bias is widened into Float scratch before its GEMMs.
        let widen: Bool
    }

    static func plan(rows: Int, hidden: Int, vocab: Int, config: LMHeadConfig,
                     widen: Bool = false) throws(GRPOError) -> Plan {
        guard rows >= 0 else { throw GRPOError(.shape, "rows must be >= 0, got \(rows)") }
        guard hidden >= 1, hidden <= Int(Int32.max) else {
            throw GRPOError(.shape, "hidden size must be in [1, 2^31), got \(hidden)")
        }
        guard vocab >= 1 else { throw GRPOError(.shape, "vocab size must be >= 1, got \(vocab)") }
        _ = try checkedProduct(rows, hidden, what: "hidden")
        _ = try checkedProduct(vocab, hidden, what: "weight")
        let t = config.temperature
        guard t > 0, t.isFinite else {
            throw GRPOError(.value, "temperature must be a positive finite number, got \(t)")
        }
        guard config.logitScale.isFinite else {
            throw GRPOError(.value, "logit_scale must be finite, got \(config.logitScale)")
        }
        if let c = config.finalLogitSoftcapping {
            guard c > 0, c.isFinite else {
                throw GRPOError(.value, "final_logit_softcapping must be a positive finite number or None, got \(c)")
            }
        }
        guard config.tileRows >= 0, config.tileRows <= maxTileDim,
              config.tileCols >= 0, config.tileCols <= maxTileDim else {
            throw GRPOError(.value,
                "tile sizes must be in [0, \(maxTileDim)] (0 = default), got \(config.tileRows) x \(config.tileCols)")
        }
        let tr = Swift.max(1, Swift.min(rows, config.tileRows == 0 ? defaultTileRows : config.tileRows))
        let tc = Swift.min(vocab, config.tileCols == 0 ? defaultTileCols : config.tileCols)
        let plan = Plan(rows: rows, hidden: hidden, vocab: vocab, tileRows: tr, tileCols: tc,
                        invT: Float(1 / t), scale: Float(config.logitScale),
                        cap: config.finalLogitSoftcapping.map { Float($0) }, widen: widen)
        _ = try scratchFloatsChecked(plan)
        return plan
    }

    /// Bytes of scratch memory one forward or backward call allocates for these sizes
    /// (independent of N and V beyond min(N, tileRows) and min(V, tileCols)).
    /// `bfloat16`: the inputs are bfloat16 (adds the Float copies of one hidden row block,
    /// one weight slice and one bias slice: (tileRows + tileCols) x hidden + tileCols floats).
    public static func scratchBytes(rows: Int, hidden: Int, vocab: Int, config: LMHeadConfig,
                                    bfloat16: Bool = false) throws(GRPOError) -> Int
    {
        let p = try plan(rows: rows, hidden: hidden, vocab: vocab, config: config, widen: bfloat16)
        return try checkedProduct(scratchFloatsChecked(p), MemoryLayout<Float>.stride, what: "scratch bytes")
    }

    /// Floats of scratch: the tile, 4 per-row statistics, and the widened inputs when needed.
    static func scratchFloatsChecked(_ p: Plan) throws(GRPOError) -> Int {
        let base = p.tileRows * p.tileCols + 4 * p.tileRows  // both dims <= 2^16: no overflow
        guard p.widen else { return base }
        let widened = try checkedProduct(p.tileRows + p.tileCols, p.hidden, what: "widened inputs")
        let (a, o1) = base.addingReportingOverflow(widened)
        let (b, o2) = a.addingReportingOverflow(p.tileCols)
        if o1 || o2 { throw GRPOError(.overflow, "scratch size overflows") }
        return b
    }

    /// Float views of the inputs' current row block / vocabulary slice: the inputs themselves
    /// when they are Float, else widened copies in scratch.
    struct Widener<E: LogitElement> {
        let hidden: UnsafePointer<E>, weight: UnsafePointer<E>, bias: UnsafePointer<E>?
        let hBuf: UnsafeMutablePointer<Float>, wBuf: UnsafeMutablePointer<Float>, bBuf: UnsafeMutablePointer<Float>
        let H: Int

        static var isFloat: Bool { E.self == Float.self }

        /// hidden rows [r0, r0 + n) as Float.
        func hiddenBlock(_ r0: Int, _ n: Int) throws(GRPOError) -> UnsafePointer<Float> {
            if Self.isFloat {
                return UnsafeRawPointer(hidden + r0 * H).assumingMemoryBound(to: Float.self)
            }
            try FusedLMHead.widen(hidden + r0 * H, n * H, into: hBuf)
            return UnsafePointer(hBuf)
        }

        /// weight rows [c0, c0 + n) as Float.
        func weightSlice(_ c0: Int, _ n: Int) throws(GRPOError) -> UnsafePointer<Float> {
            if Self.isFloat {
                return UnsafeRawPointer(weight + c0 * H).assumingMemoryBound(to: Float.self)
            }
            try FusedLMHead.widen(weight + c0 * H, n * H, into: wBuf)
            return UnsafePointer(wBuf)
        }

        /// bias [c0, c0 + n) as Float, or nil.
        func biasSlice(_ c0: Int, _ n: Int) throws(GRPOError) -> UnsafePointer<Float>? {
            guard let bias else { return nil }
            if Self.isFloat { return UnsafeRawPointer(bias + c0).assumingMemoryBound(to: Float.self) }
            try FusedLMHead.widen(bias + c0, n, into: bBuf)
            return UnsafePointer(bBuf)
        }
    }

    /// Converts `count` elements to Float (parallel over fixed chunks; exact for bf16).
    static func widen<E: LogitElement>(_ src: UnsafePointer<E>, _ count: Int, into dst: UnsafeMutablePointer<Float>) throws(GRPOError) {
        let d = UncheckedSendable(dst)
        try Parallel.forEachChunk(count: count, chunkSize: 1 << 16) { _, range in
            let dst = d.value
            var j = range.lowerBound
            while j + 8 <= range.upperBound {
                Float.store8(E.load8(src + j), dst + j)
                j += 8
            }
            while j < range.upperBound { dst[j] = src[j].floatValue; j += 1 }
        }
    }

    /// Page-aligned Float scratch mapped straight from the OS (mmap) and unmapped by
    /// `releaseScratch`: the pages go back at once, so a call's peak memory is exactly its
    /// scratch (malloc would keep up to its dynamic trim threshold of freed memory, and the
    /// forward's and the backward's buffers could add up). Failure -> GRPOError(.noMemory).
    static func allocateScratch(_ count: Int) throws(GRPOError) -> UnsafeMutableBufferPointer<Float> {
        let bytes = Swift.max(count, 1) * MemoryLayout<Float>.stride
        guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else {
            throw GRPOError(.noMemory, "could not map \(bytes) bytes of scratch for the fused LM head")
        }
        // Transparent huge pages where the system allows them on request (madvise mode): one fault
        // per 2 MiB instead of per 4 KiB, and far fewer TLB misses when the GEMMs walk a resident
        // block with a row stride of V floats. Advisory: ignored where unsupported.
        if bytes >= hugePageThreshold { _ = madvise(raw, bytes, Int32(MADV_HUGEPAGE)) }
        return UnsafeMutableBufferPointer(start: raw.bindMemory(to: Float.self, capacity: count), count: count)
    }

    /// Scratch mappings from this size on are advised to use transparent huge pages.
    static let hugePageThreshold = 4 << 20
    static func releaseScratch(_ buffer: UnsafeMutableBufferPointer<Float>) {
        guard let base = buffer.baseAddress else { return }
        _ = munmap(UnsafeMutableRawPointer(base), Swift.max(buffer.count, 1) * MemoryLayout<Float>.stride)
    }

    /// Every GEMM call of the kernels is single-threaded: parallelism comes from running fixed
    /// sub-GEMMs on the Dispatch workers (OpenBLAS's own threading changes rounding with the
    /// thread count: measured with OpenBLAS 0.3.21's Haswell kernels, 1 vs 2 threads differ in
    /// ~5% of the elements of a 1024 x 4096 x 896 product).
    static func useSingleThreadedBLAS() {
        if openblas_get_num_threads() != 1 { openblas_set_num_threads(1) }
    }

    static func validateCommon(_ p: Plan, hidden: Int, weight: Int, bias: Int?, targets: UnsafeBufferPointer<Int64>)
        throws(GRPOError)
    {
        let nh = p.rows * p.hidden, vh = p.vocab * p.hidden
        guard hidden >= nh else { throw GRPOError(.shape, "hidden holds \(hidden) elements, expected \(p.rows) x \(p.hidden) = \(nh)") }
        guard weight >= vh else { throw GRPOError(.shape, "weight holds \(weight) elements, expected \(p.vocab) x \(p.hidden) = \(vh)") }
        if let bias, bias < p.vocab { throw GRPOError(.shape, "bias holds \(bias) elements, expected \(p.vocab)") }
        guard targets.count >= p.rows else {
            throw GRPOError(.shape, "targets holds \(targets.count) elements, expected \(p.rows)")
        }
        for i in 0..<p.rows where targets[i] >= Int64(p.vocab) {
            throw GRPOError(.value,
                "targets[\(i)] = \(targets[i]) is out of range for a vocabulary of \(p.vocab) (negative targets are not scored)")
        }
    }

    /// y = (x + b) * scale, softcapped; the temperature is applied later to differences
    /// (y - max) / tau, which stay accurate when |y| ~ 1e4.
    @inline(__always)
    static func transform(_ x: SIMD8<Float>, _ p: Plan) -> SIMD8<Float> {
        var y = x * SIMD8(repeating: p.scale)
        if let c = p.cap {
            y = SIMD8(repeating: c) * simdTanh(y * SIMD8(repeating: 1 / c))
        }
        return y
    }

    @inline(__always)
    static func transformScalar(_ x: Float, _ p: Plan) -> Float { transform(SIMD8(repeating: x), p)[0] }

    // MARK: forward

    /// Log-probs (and entropy, and the log-sum-exp `backward` needs) of `targets` under
    /// logits = hidden W^T + bias, for hidden (rows x hiddenSize), weight (vocab x hiddenSize),
    /// bias (vocab) or nil. Outputs are (rows) Float. For no-grad inference (old/ref
    /// policies) pass logSumExp = nil: nothing is kept for a backward.
    /// hidden, weight and bias are Float or BFloat16 (widened per tile; arithmetic in Float).
    public static func forward<E: LogitElement>(
        hidden: UnsafeBufferPointer<E>, weight: UnsafeBufferPointer<E>, bias: UnsafeBufferPointer<E>?,
        rows: Int, hiddenSize: Int, vocab: Int, targets: UnsafeBufferPointer<Int64>, config: LMHeadConfig,
        logProbs: UnsafeMutableBufferPointer<Float>, entropy: UnsafeMutableBufferPointer<Float>?,
        logSumExp: UnsafeMutableBufferPointer<Double>?
    ) throws(GRPOError) {
        let p = try plan(rows: rows, hidden: hiddenSize, vocab: vocab, config: config,
                         widen: !Widener<E>.isFloat)
        try validateCommon(p, hidden: hidden.count, weight: weight.count, bias: bias?.count, targets: targets)
        try LogProbs.checkOutputs(rows, logProbs.count, entropy?.count, logSumExp?.count)
        guard rows > 0, let hp = hidden.baseAddress, let wp = weight.baseAddress else { return }
        let bp = bias?.baseAddress
        let scratchBuffer = try allocateScratch(scratchFloatsChecked(p))
        defer { releaseScratch(scratchBuffer) }
        guard let scratch = scratchBuffer.baseAddress else {
            throw GRPOError(.internal, "empty scratch mapping")
        }
        let tile = scratch
        let mS = scratch + p.tileRows * p.tileCols
        let sS = mS + p.tileRows, tS = sS + p.tileRows, zyS = tS + p.tileRows
        let hBuf = zyS + p.tileRows, wBuf = hBuf + (p.widen ? p.tileRows * p.hidden : 0)
        let bBuf = wBuf + (p.widen ? p.tileCols * p.hidden : 0)
        let inputs = Widener(hidden: hp, weight: wp, bias: bp, hBuf: hBuf, wBuf: wBuf, bBuf: bBuf, H: p.hidden)
        useSingleThreadedBLAS()
        let H = p.hidden
        var r0 = 0
        while r0 < rows {
            let nr = Swift.min(p.tileRows, rows - r0)
            for r in 0..<nr { mS[r] = -.infinity; sS[r] = 0; tS[r] = 0; zyS[r] = 0 }
            let hBlock = try inputs.hiddenBlock(r0, nr)
            var c0 = 0
            while c0 < vocab {
                let nc = Swift.min(p.tileCols, vocab - c0)
                let wSlice = try inputs.weightSlice(c0, nc), bSlice = try inputs.biasSlice(c0, nc)
                let state = UncheckedSendable((tile, mS, sS, tS, zyS))
                // Each task: the logits of its gemmRows rows, then their fold.
                try Parallel.forEachChunk(count: nr, chunkSize: gemmRows) { _, range in
                    let (tile, mS, sS, tS, zyS) = state.value
                    let sub = tile + range.lowerBound * nc
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(range.count), Int32(nc), Int32(H),
                                1, hBlock + range.lowerBound * H, Int32(H), wSlice, Int32(H),
                                0, sub, Int32(nc))
                    for r in range {
                        let y = Int(targets[r0 + r])
                        guard y >= 0 else { continue }
                        foldForward(tile + r * nc, nc, bSlice, p,
                                    target: y - c0, m: &mS[r], s: &sS[r], t: &tS[r], zy: &zyS[r])
                    }
                }
                c0 += nc
            }
            for r in 0..<nr {
                let i = r0 + r
                guard targets[i] >= 0 else {
                    logProbs[i] = 0; entropy?[i] = 0; logSumExp?[i] = 0
                    continue
                }
                let logS = logf(sS[r])
                logProbs[i] = (zyS[r] - mS[r]) * p.invT - logS
                entropy?[i] = logS - tS[r] / sS[r]
                logSumExp?[i] = Double(mS[r]) * Double(p.invT) + Double(logS)
            }
            r0 += nr
        }
    }

    /// Transforms one tile row in place into y (before the temperature) and folds it into the
    /// row's statistics: m = max y, s = sum e^d, t = sum e^d d, d = (y - m) / tau.
    @inline(__always)
    static func foldForward(_ row: UnsafeMutablePointer<Float>, _ n: Int, _ bias: UnsafePointer<Float>?,
                            _ p: Plan, target: Int, m: inout Float, s: inout Float, t: inout Float,
                            zy: inout Float) {
        let bm = transformRow(row, n, bias, p, target: target, zy: &zy)
        let newM = Swift.max(m, bm)
        if newM == -.infinity { return }
        if newM > m && s > 0 {
            let d = (m - newM) * p.invT
            let c = vexp(d)
            t = c * (t + d * s)
            s = c * s
        }
        m = newM
        let (cs, ct) = expSums(row, n, max: m, p, storeExp: false)
        s += cs
        t += ct
    }

    /// Applies bias, scale and softcap to one row chunk in place (x -> y) and returns max y; zy
    /// receives y at `target` when the target falls in the chunk.
    @inline(__always)
    static func transformRow(_ row: UnsafeMutablePointer<Float>, _ n: Int, _ bias: UnsafePointer<Float>?,
                             _ p: Plan, target: Int, zy: inout Float) -> Float {
        var vm = SIMD8<Float>(repeating: -.infinity)
        var j = 0
        while j + 8 <= n {
            var x = Float.load8(row + j)
            if let bias { x += Float.load8(bias + j) }
            let z = transform(x, p)
            Float.store8(z, row + j)
            vm = vm.replacing(with: z, where: vm .< z)  // vmaxps (pointwiseMax is scalar)
            j += 8
        }
        var bm = laneMax(vm)
        while j < n {
            var x = row[j]
            if let bias { x += bias[j] }
            let z = transformScalar(x, p)
            row[j] = z
            if z > bm { bm = z }
            j += 1
        }
        if target >= 0 && target < n { zy = row[target] }
        return bm
    }

    /// Over one chunk of y: (sum e^d, sum e^d d) with d = max((y - m) / tau, -128), in SIMD8
    /// lanes summed at the end. With `storeExp` the chunk is overwritten with e^d.
    @inline(__always)
    static func expSums(_ row: UnsafeMutablePointer<Float>, _ n: Int, max m: Float, _ p: Plan,
                        storeExp: Bool) -> (s: Float, t: Float) {
        let negM = SIMD8<Float>(repeating: -m), it = SIMD8<Float>(repeating: p.invT)
        let floor = SIMD8<Float>(repeating: -128)
        var vs = SIMD8<Float>(), vt = SIMD8<Float>()
        var j = 0
        while j + 8 <= n {
            var d = (Float.load8(row + j) + negM) * it
            d.replace(with: floor, where: d .< floor)
            let e = simdExp(d)
            if storeExp { Float.store8(e, row + j) }
            vs += e
            vt = vt.addingProduct(e, d)
            j += 8
        }
        if j < n {
            var d = floor
            for k in 0..<(n - j) { d[k] = (row[j + k] - m) * p.invT }
            d.replace(with: floor, where: d .< floor)
            let e = simdExp(d)
            vs += e
            vt = vt.addingProduct(e, d)
            if storeExp { for k in 0..<(n - j) { row[j + k] = e[k] } }
        }
        return (laneSum(vs), laneSum(vt))
    }

    // MARK: backward

    /// Gradients of sum_i (gradLogProbs_i lp_i + gradEntropy_i H_i) with respect to hidden
    /// (rows x hiddenSize), weight (vocab x hiddenSize) and bias (vocab), each optional and
    /// OVERWRITTEN (fp32). `logSumExp` (and `entropy` when gradEntropy is given) come from
    /// `forward`. Missing gradLogProbs / gradEntropy count as zero.
    public static func backward<E: LogitElement>(
        hidden: UnsafeBufferPointer<E>, weight: UnsafeBufferPointer<E>, bias: UnsafeBufferPointer<E>?,
        rows: Int, hiddenSize: Int, vocab: Int, targets: UnsafeBufferPointer<Int64>, config: LMHeadConfig,
        logSumExp: UnsafeBufferPointer<Double>, entropy: UnsafeBufferPointer<Float>?,
        gradLogProbs: UnsafeBufferPointer<Float>?, gradEntropy: UnsafeBufferPointer<Float>?,
        gradHidden: UnsafeMutableBufferPointer<Float>?, gradWeight: UnsafeMutableBufferPointer<Float>?,
        gradBias: UnsafeMutableBufferPointer<Float>?
    ) throws(GRPOError) {
        let p = try plan(rows: rows, hidden: hiddenSize, vocab: vocab, config: config,
                         widen: !Widener<E>.isFloat)
        try validateCommon(p, hidden: hidden.count, weight: weight.count, bias: bias?.count, targets: targets)
        for (name, c) in [("logsumexp", logSumExp.count), ("entropy", entropy?.count),
                          ("grad_log_probs", gradLogProbs?.count), ("grad_entropy", gradEntropy?.count)] {
            if let c, c < rows { throw GRPOError(.shape, "\(name) holds \(c) elements, expected \(rows)") }
        }
        if gradEntropy != nil && entropy == nil {
            throw GRPOError(.null, "entropy (from the forward) is required when grad_entropy is given")
        }
        let nh = rows * hiddenSize, vh = vocab * hiddenSize
        if let g = gradHidden, g.count < nh { throw GRPOError(.shape, "grad_hidden holds \(g.count) elements, expected \(nh)") }
        if let g = gradWeight, g.count < vh { throw GRPOError(.shape, "grad_weight holds \(g.count) elements, expected \(vh)") }
        if let g = gradBias, g.count < vocab { throw GRPOError(.shape, "grad_bias holds \(g.count) elements, expected \(vocab)") }
        if gradBias != nil && bias == nil {
            throw GRPOError(.null, "grad_bias was requested but bias is NULL")
        }
        // Zero the accumulators.
        for g in [gradHidden, gradWeight, gradBias] {
            if let g, let b = g.baseAddress { b.initialize(repeating: 0, count: g.count) }
        }
        guard rows > 0, let hp = hidden.baseAddress, let wp = weight.baseAddress else { return }
        guard gradHidden != nil || gradWeight != nil || gradBias != nil else { return }
        let bp = bias?.baseAddress
        let ghp = gradHidden?.baseAddress, gwp = gradWeight?.baseAddress, gbp = gradBias?.baseAddress
        let scratchBuffer = try allocateScratch(scratchFloatsChecked(p))
        defer { releaseScratch(scratchBuffer) }
        guard let scratch = scratchBuffer.baseAddress else {
            throw GRPOError(.internal, "empty scratch mapping")
        }
        let tile = scratch
        let hBuf = scratch + p.tileRows * p.tileCols + 4 * p.tileRows
        let wBuf = hBuf + (p.widen ? p.tileRows * p.hidden : 0)
        let bBuf = wBuf + (p.widen ? p.tileCols * p.hidden : 0)
        let inputs = Widener(hidden: hp, weight: wp, bias: bp, hBuf: hBuf, wBuf: wBuf, bBuf: bBuf, H: p.hidden)
        useSingleThreadedBLAS()
        let H = p.hidden
        var c0 = 0
        while c0 < vocab {
            let nc = Swift.min(p.tileCols, vocab - c0)
            let wSlice = try inputs.weightSlice(c0, nc), bSlice = try inputs.biasSlice(c0, nc)
            var r0 = 0
            while r0 < rows {
                let nr = Swift.min(p.tileRows, rows - r0)
                let hBlock = try inputs.hiddenBlock(r0, nr)
                let tileS = UncheckedSendable(tile)
                // Tasks over gemmRows rows: recompute the logits, overwrite them with dL/dx,
                // then grad_hidden[those rows] += G W[slice].
                try Parallel.forEachChunk(count: nr, chunkSize: gemmRows) { _, range in
                    let tile = tileS.value
                    let sub = tile + range.lowerBound * nc
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(range.count), Int32(nc), Int32(H),
                                1, hBlock + range.lowerBound * H, Int32(H), wSlice, Int32(H),
                                0, sub, Int32(nc))
                    for r in range {
                        let i = r0 + r
                        let gl = gradLogProbs?[i] ?? 0, gh = gradEntropy?[i] ?? 0
                        let y = Int(targets[i])
                        let row = tile + r * nc
                        guard y >= 0, gl != 0 || gh != 0 else {
                            row.initialize(repeating: 0, count: nc)
                            continue
                        }
                        foldBackward(row, nc, bSlice, p, target: y - c0,
                                     lse: logSumExp[i], h: entropy?[i] ?? 0, gl: gl, gh: gh)
                    }
                    if let ghp {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(range.count), Int32(H), Int32(nc),
                                    1, sub, Int32(nc), wSlice, Int32(H),
                                    1, ghp + (r0 + range.lowerBound) * H, Int32(H))
                    }
                }
                // Tasks over gemmCols vocabulary columns: grad_weight[cols] += G[:, cols]^T hidden[rows]
                // and grad_bias[cols] += column sums (rows in order).
                if gwp != nil || gbp != nil {
                    let cleaned = GradWeightGEMM.cleanedBlock(rows: nr, hidden: hBlock, H: H) { r in
                        targets[r0 + r] < 0 || (gradLogProbs?[r0 + r] ?? 0) == 0 && (gradEntropy?[r0 + r] ?? 0) == 0
                    }
                    try Parallel.forEachChunk(count: nc, chunkSize: gemmCols) { _, cols in
                        let tile = tileS.value
                        if let gwp {
                            GradWeightGEMM.gemmTN(cleaned: cleaned, m: cols.count, n: H, k: nr, g: tile + cols.lowerBound,
                                                  ldg: nc, x: hBlock, ldx: H, beta: 1,
                                                  c: gwp + (c0 + cols.lowerBound) * H, ldc: H)
                        }
                        if let gbp {
                            for r in 0..<nr {
                                let row = tile + r * nc
                                for j in cols { gbp[c0 + j] += row[j] }
                            }
                        }
                    }
                }
                r0 += nr
            }
            c0 += nc
        }
    }

    /// Overwrites one tile row (raw logits x - bias) with dL/dx.
    @inline(__always)
    static func foldBackward(_ row: UnsafeMutablePointer<Float>, _ n: Int, _ bias: UnsafePointer<Float>?,
                             _ p: Plan, target: Int, lse: Double, h: Float, gl: Float, gh: Float) {
        // dL/dz_v = p_v (cA + cB lp_v) + 1[v=t] gl / tau  (cA, cB include 1/tau);
        // dz/dx = scale (1 - tanh^2) with softcap, else scale.
        let cA = -(gl + gh * h) * p.invT, cB = -gh * p.invT
        let va = SIMD8<Float>(repeating: cA), vb = SIMD8<Float>(repeating: cB)
        // lp = (y - r) / tau - c with r = Float(lse tau) near the row max and c = lse - r / tau
        // (Double): accurate for |y| ~ 1e4, as in the forward.
        let hi = Float(lse / Double(p.invT)), lo = Float(lse - Double(hi) * Double(p.invT))
        let negHi = SIMD8<Float>(repeating: -hi), vlo = SIMD8<Float>(repeating: lo)
        let sc = SIMD8<Float>(repeating: p.scale), it = SIMD8<Float>(repeating: p.invT)
        @inline(__always)
        func grad(_ xIn: SIMD8<Float>, _ extra: SIMD8<Float>) -> SIMD8<Float> {
            let y = xIn * sc
            var z: SIMD8<Float>, dzdx: SIMD8<Float>
            if let c = p.cap {
                let th = simdTanh(y * SIMD8(repeating: 1 / c))
                z = SIMD8(repeating: c) * th
                dzdx = sc * (SIMD8(repeating: 1) - th * th)
            } else {
                z = y
                dzdx = sc
            }
            var lp = ((z + negHi) * it) - vlo
            let floor = SIMD8<Float>(repeating: -128)
            lp = lp.replacing(with: floor, where: lp .< floor)  // p = 0 there; no 0 * inf
            let e = simdExp(lp)
            let g = e * va.addingProduct(vb, lp) + extra
            return g * dzdx
        }
        var targetGrad: Float = 0
        let hasTarget = target >= 0 && target < n
        if hasTarget {
            var x = row[target]
            if let bias { x += bias[target] }
            targetGrad = grad(SIMD8(repeating: x), SIMD8(repeating: gl * p.invT))[0]
        }
        var j = 0
        while j + 8 <= n {
            var x = Float.load8(row + j)
            if let bias { x += Float.load8(bias + j) }
            Float.store8(grad(x, SIMD8()), row + j)
            j += 8
        }
        while j < n {
            var x = row[j]
            if let bias { x += bias[j] }
            row[j] = grad(SIMD8(repeating: x), SIMD8())[0]
            j += 1
        }
        if hasTarget { row[target] = targetGrad }
    }
}

/// One plain row-major sgemm C (m x n) = A (m x k) B^T (B is n x k), with the library's
/// BLAS thread setting: the anchor the benchmarks compare the fused head with.
public func benchmarkSgemmNT(m: Int, n: Int, k: Int, a: UnsafeBufferPointer<Float>,
                             b: UnsafeBufferPointer<Float>, c: UnsafeMutableBufferPointer<Float>)
    throws(GRPOError)
{
    guard m >= 1, n >= 1, k >= 1, m <= Int(Int32.max), n <= Int(Int32.max), k <= Int(Int32.max) else {
        throw GRPOError(.shape, "sgemm sizes must be in [1, 2^31), got m=\(m) n=\(n) k=\(k)")
    }
    let mk = try checkedProduct(m, k, what: "a"), nk = try checkedProduct(n, k, what: "b")
    let mn = try checkedProduct(m, n, what: "c")
    guard a.count >= mk, b.count >= nk, c.count >= mn,
          let ap = a.baseAddress, let bp = b.baseAddress, let cp = c.baseAddress else {
        throw GRPOError(.shape, "sgemm buffers too small for m=\(m) n=\(n) k=\(k)")
    }
    // The anchor is OpenBLAS at its best: its own threading over the library's thread count.
    let n32 = Int32(clamping: Parallel.numThreads)
    if openblas_get_num_threads() != n32 { openblas_set_num_threads(n32) }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                1, ap, Int32(k), bp, Int32(k), 0, cp, Int32(n))
}
