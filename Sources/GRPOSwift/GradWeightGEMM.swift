// grad_weight += G^T X for the fused LM-head kernels, without letting garbage in rows that carry
// no gradient poison the result.
//
// Rows of G (d loss / d logits) are exactly zero for positions without gradient (label < 0,
// mask 0, zero incoming gradient), so in exact arithmetic their hidden rows X contribute nothing.
// Inside a GEMM, though, 0 * NaN = NaN: one NaN or infinity in the hidden state of a padding row
// would turn whole columns of grad_weight into NaN while the loss stays finite (a silent NaN from
// masked data). Such rows are left out of the GEMM; the result is then what it is with finite
// values in those rows. The check reads only the hidden rows of the skipped positions; when none
// holds a non-finite value (the usual case) the GEMM is the same single sgemm as before, bits
// unchanged.
import CBLAS

enum GradWeightGEMM {
    /// The runs of rows [0, rows) to feed the GEMM, or nil for all of them (no skipped row of
    /// `hidden` (rows x H, leading dimension H) holds a non-finite value). `skipped(r)`: row r's
    /// gradient row is all zero.
    static func rowRuns(rows: Int, hidden: UnsafePointer<Float>, H: Int,
                        skipped: (Int) -> Bool) -> [Range<Int>]? {
        var runs: [Range<Int>] = []
        var start = 0
        var excluded = false
        for r in 0..<rows where skipped(r) && !allFinite(hidden + r * H, H) {
            if start < r { runs.append(start..<r) }
            start = r + 1
            excluded = true
        }
        guard excluded else { return nil }
        if start < rows { runs.append(start..<rows) }
        return runs
    }

    /// Whether all `n` values at `p` are finite (x * 0 is 0 for finite x, NaN otherwise).
    @inline(__always)
    static func allFinite(_ p: UnsafePointer<Float>, _ n: Int) -> Bool {
        var acc = SIMD8<Float>(repeating: 0)
        var j = 0
        while j + 8 <= n {
            acc += UnsafeRawPointer(p + j).loadUnaligned(as: SIMD8<Float>.self) * 0
            j += 8
        }
        var tail: Float = 0
        while j < n { tail += p[j] * 0; j += 1 }
        return (acc.sum() + tail) == 0
    }

    /// c (m x n, leading dimension ldc) = g^T x + beta c, where g is (k x m) with leading
    /// dimension ldg and x is (k x n) with leading dimension ldx, over the rows of `runs` of the
    /// k dimension (nil: all k). Single-threaded sgemm (the callers split m across workers).
    static func gemmTN(runs: [Range<Int>]?, m: Int, n: Int, k: Int, g: UnsafePointer<Float>, ldg: Int,
                       x: UnsafePointer<Float>, ldx: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard let runs else {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                        1, g, Int32(ldg), x, Int32(ldx), beta, c, Int32(ldc))
            return
        }
        var b = beta
        for run in runs {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(run.count),
                        1, g + run.lowerBound * ldg, Int32(ldg), x + run.lowerBound * ldx, Int32(ldx), b, c, Int32(ldc))
            b = 1
        }
        if b == 0 {  // every row left out and c not accumulated: c = 0
            for i in 0..<m { (c + i * ldc).initialize(repeating: 0, count: n) }
        }
    }
}
