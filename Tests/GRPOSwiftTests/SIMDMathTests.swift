import Testing
@testable import GRPOSwift
#if canImport(Glibc)
import Glibc
#endif

/// Distance in units in the last place of `x` from the Double `ref` (rounded to Float first).
func ulpError(_ x: Float, _ ref: Double) -> Double {
    let r = Float(ref)
    if x == r { return 0 }
    return abs(Double(x) - ref) / Double(r.ulp)
}

@Suite struct SIMDMathTests {
    @Test func expIsAccurateToTwoULP() {
        var rng = SplitMix(seed: 21)
        var worst = 0.0, worstX: Float = 0
        // Uniform over the domain plus a dense sweep near 0, where most softmax mass lives.
        var xs: [Float] = (0..<200_000).map { _ in Float(rng.uniform(-87.3, 88.3)) }
        xs += (0..<100_000).map { _ in Float(rng.uniform(-1, 1)) }
        xs += [0, -0.0, 1, -1, Float(0.5 * M_LN2), Float(-0.5 * M_LN2), 88.3, -87.3]
        var i = 0
        while i + 8 <= xs.count {
            let v = SIMD8<Float>(xs[i..<(i + 8)])
            let e = simdExp(v)
            for k in 0..<8 {
                let u = ulpError(e[k], exp(Double(v[k])))
                if u > worst { worst = u; worstX = v[k] }
            }
            i += 8
        }
        #expect(worst <= 2, "worst \(worst) ulp at x = \(worstX)")
    }

    @Test func expSpecialValues() {
        let v = SIMD8<Float>(-.infinity, -1000, -87.7, 0, .infinity, .nan, 100, -128)
        let e = simdExp(v)
        #expect(e[0] == 0 && e[1] == 0 && e[2] == 0 && e[3] == 1 && e[7] == 0)
        #expect(e[4] > 2.3e38 && e[4].isFinite && e[6] == e[4])  // documented saturation
        #expect(e[5].isNaN)
    }

    @Test func tanhIsAccurate() {
        var rng = SplitMix(seed: 22)
        var worst = 0.0
        var xs: [Float] = (0..<100_000).map { _ in Float(rng.uniform(-12, 12)) }
        xs += (0..<50_000).map { _ in Float(rng.uniform(-0.1, 0.1)) }
        var i = 0
        while i + 8 <= xs.count {
            let v = SIMD8<Float>(xs[i..<(i + 8)])
            let t = simdTanh(v)
            for k in 0..<8 { worst = Swift.max(worst, ulpError(t[k], tanh(Double(v[k])))) }
            i += 8
        }
        #expect(worst <= 4, "worst \(worst) ulp")
        let s = simdTanh(SIMD8<Float>(0, -0.0, 50, -50, .infinity, -.infinity, 1e-30, .nan))
        #expect(s[0] == 0 && s[2] == 1 && s[3] == -1 && s[4] == 1 && s[5] == -1 && s[6] == 1e-30)
        #expect(s[7].isNaN)
    }
}
