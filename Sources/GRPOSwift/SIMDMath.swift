// Vectorised exp and tanh for SIMD8<Float> (the log-prob kernels' inner loops).
//
// exp(x): range reduction x = n ln2 + r with n = round(x log2 e) (the 1.5*2^23 magic-number
// add: SIMD rounding and float->int conversions scalarise on x86), r in [-ln2/2, ln2/2]
// computed with ln2 split in a high part exact in 9 bits and a low correction (Cody-Waite);
// exp(r) = 1 + r + r^2 P(r) with a degree-5 polynomial P (the classic single-precision
// minimax coefficients of the Cephes expf); 2^n is built in the exponent bits.
// Accuracy: <= 2 ulp against Double exp over [-87.3, 88.37] (tested in SIMDMathTests).
// Below -87.68 (= -126.5 ln 2) the result is exactly 0 (the true value is < 1e-38 and
// subnormal); between -87.68 and -87.33 it is a subnormal approximation. Above 88.37
// (just below 127.5 ln 2) it saturates at exp(88.37) ~ 2.39e38 instead of overflowing: the kernels
// only evaluate exp at arguments <= 0. NaN propagates; exp(-inf) = 0. No lane masks: only
// min/max selects, FMAs and integer bit operations, which all stay in AVX2 registers.
//
// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|): no cancellation for large |x|;
// for |x| < 0.25 the odd Taylor series to x^15 avoids the 1 - e cancellation. Accuracy: a few ulp (tested).

@usableFromInline let expLowerBound: Float = -88.0      // n = -127 here: the result is exactly 0
@usableFromInline let expUpperBound: Float = 88.37      // < 127.5 ln 2: n <= 127, 2^n stays normal

@inlinable @inline(__always)
func simdExp(_ x: SIMD8<Float>) -> SIMD8<Float> {
    // Constants are local literal splats: comparisons against a splat of a global constant
    // are lowered to a per-lane scalar loop (measured), literal splats to vmaxps/vminps.
    let lo = SIMD8<Float>(repeating: -88.0)       // expLowerBound
    let hi = SIMD8<Float>(repeating: 88.37)       // expUpperBound
    let log2e = SIMD8<Float>(repeating: 1.44269504088896341)
    let magic = SIMD8<Float>(repeating: 12582912.0)  // 1.5 * 2^23
    // Clamp (`replacing(where:)` with a literal splat lowers to vmaxps/vminps; `clamped` and
    // `pointwiseMax` become per-lane scalar code). NaN compares false and stays NaN.
    var xc = x.replacing(with: lo, where: x .< lo)
    xc = xc.replacing(with: hi, where: hi .< xc)
    // tn = x log2e + magic rounds x log2e to the integer n, held in the low mantissa bits.
    let tn = magic.addingProduct(xc, log2e)
    let n = tn - magic
    // r = x - n ln2 with ln2 = c1 + c2 (c1 has few bits: n c1 is exact).
    var r = xc.addingProduct(n, SIMD8(repeating: -0.693359375))
    r = r.addingProduct(n, SIMD8(repeating: 2.12194440e-4))
    let r2 = r * r
    var p = SIMD8<Float>(repeating: 1.3981999507e-3).addingProduct(SIMD8(repeating: 1.9875691500e-4), r)
    p = SIMD8<Float>(repeating: 8.3334519073e-3).addingProduct(p, r)
    p = SIMD8<Float>(repeating: 4.1665795894e-2).addingProduct(p, r)
    p = SIMD8<Float>(repeating: 1.6666665459e-1).addingProduct(p, r)
    p = SIMD8<Float>(repeating: 5.0000001201e-1).addingProduct(p, r)
    let y = (r.addingProduct(p, r2)) + SIMD8(repeating: 1)
    // 2^n: (n + 127) << 23 from the integer bits of tn (the bits of magic are 0x4B400000).
    // n is in [-127, 127] on the clamped domain. n = -127 (x < -126.5 ln 2 = -87.68) gives
    // exponent bits 0, i.e. 2^n = 0 and a result of exactly 0, with no masking.
    let ni = unsafeBitCast(tn, to: SIMD8<Int32>.self) &- SIMD8(repeating: 0x4B40_0000)
    let scaleBits = (ni &+ SIMD8(repeating: 127)) &<< SIMD8(repeating: 23)
    return y * unsafeBitCast(scaleBits, to: SIMD8<Float>.self)
}

@inlinable @inline(__always)
func simdTanh(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let bits = unsafeBitCast(x, to: SIMD8<UInt32>.self)
    let signBit = bits & SIMD8(repeating: 0x8000_0000)
    let ax = unsafeBitCast(bits & SIMD8(repeating: 0x7FFF_FFFF), to: SIMD8<Float>.self)
    let e = simdExp(ax * SIMD8(repeating: -2))
    let mag = (SIMD8<Float>(repeating: 1) - e) / (SIMD8<Float>(repeating: 1) + e)
    let big = unsafeBitCast(unsafeBitCast(mag, to: SIMD8<UInt32>.self) | signBit, to: SIMD8<Float>.self)
    // Small |x| (< 0.25, where 1 - e would cancel): the odd Taylor series to x^15
    // (truncation < 1e-10 relative).
    let x2 = x * x
    var s = SIMD8<Float>(repeating: -929569.0 / 638512875.0)
    s = s * x2 + SIMD8(repeating: 21844.0 / 6081075.0)
    s = s * x2 + SIMD8(repeating: -1382.0 / 155925.0)
    s = s * x2 + SIMD8(repeating: 62.0 / 2835.0)
    s = s * x2 + SIMD8(repeating: -17.0 / 315.0)
    s = s * x2 + SIMD8(repeating: 2.0 / 15.0)
    s = s * x2 + SIMD8(repeating: -1.0 / 3.0)
    let small = x.addingProduct(x * x2, s)
    let quarter = SIMD8<Float>(repeating: 0.25)
    return big.replacing(with: small, where: ax .< quarter)
}

/// Scalar exp with the SIMD kernel's results (for tails and single elements).
@inlinable @inline(__always)
func vexp(_ x: Float) -> Float { simdExp(SIMD8(repeating: x))[0] }

/// Scalar tanh with the SIMD kernel's results.
@inlinable @inline(__always)
func vtanh(_ x: Float) -> Float { simdTanh(SIMD8(repeating: x))[0] }

/// Horizontal sum of 8 lanes in a fixed order.
@inlinable @inline(__always)
func laneSum(_ v: SIMD8<Float>) -> Float {
    let a = v.lowHalf + v.highHalf
    let b = a.lowHalf + a.highHalf
    return b[0] + b[1]
}

/// Horizontal max of 8 lanes (NaN-propagating like torch.max).
@inlinable @inline(__always)
func laneMax(_ v: SIMD8<Float>) -> Float {
    var m = v[0]
    for i in 1..<8 {
        let x = v[i]
        if x > m || x.isNaN { m = x }
    }
    return m
}
