// grad_weight += G^T X for the fused LM-head kernels, without letting garbage in rows that carry
// no gradient poison the result.
//
// Rows of G (d loss / d logits) are exactly zero for positions without gradient (label < 0,
// mask 0, zero incoming gradient), so in exact arithmetic their hidden rows X contribute nothing.
// Inside a GEMM, though, 0 * NaN = NaN: one NaN or infinity in the hidden state of a padding row
// would turn whole columns of grad_weight into NaN while the loss stays finite (a silent NaN from
// masked data). Such rows are replaced by zeros in a copy of the block, and the GEMM runs with the
// same shape as it would on finite data: the same bits as with any finite values in those rows
// (splitting the GEMM around them instead changed the rounding of the sums over rows). The check
// reads only the hidden rows of the skipped positions; when none holds a non-finite value (the
// usual case) no copy is made and the GEMM reads the block in place.
import CBLAS

enum GradWeightGEMM {
    /// nil when no skipped row of `hidden` (rows x H, leading dimension H) holds a non-finite
    /// value (use `hidden` itself); otherwise a copy of the block whose skipped non-finite rows are
    /// 0. `skipped(r)`: row r's gradient row is all zero.
    static func cleanedBlock(rows: Int, hidden: UnsafePointer<Float>, H: Int,
                             skipped: (Int) -> Bool) -> [Float]? {
        var copy: [Float]? = nil
        for r in 0..<rows where skipped(r) && !allFinite(hidden + r * H, H) {
            if copy == nil { copy = Array(UnsafeBufferPointer(start: hidden, count: rows * H)) }
            copy!.withUnsafeMutableBufferPointer { c in
                (c.baseAddress! + r * H).update(repeating: 0, count: H)
            }
        }
        return copy
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
    /// dimension ldg and x is (k x n) with leading dimension ldx, read from `cleaned` (leading
    /// dimension n) when it is given. Single-threaded sgemm (the callers split m across workers).
    static func gemmTN(cleaned: [Float]?, m: Int, n: Int, k: Int, g: UnsafePointer<Float>, ldg: Int,
                       x: UnsafePointer<Float>, ldx: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        func gemm(_ x: UnsafePointer<Float>, _ ldx: Int) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                        1, g, Int32(ldg), x, Int32(ldx), beta, c, Int32(ldc))
        }
        if let cleaned {
            cleaned.withUnsafeBufferPointer { gemm($0.baseAddress!, n) }
        } else {
            gemm(x, ldx)
        }
    }
}
