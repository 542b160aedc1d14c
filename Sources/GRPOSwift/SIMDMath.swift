// Vectorised exp and tanh for SIMD8<Float> (the log-prob kernels' inner loops).
//
// exp(x): range reduction x = n ln2 + r with n = round(x log2 e) (the 1.5*2^23 magic-number
// add: SIMD rounding and float->int conversions scalarise on x86), r in [-ln2/2, ln2/2]
// computed with ln2 split in a high part exact in 9 bits and a low correction (Cody-Waite);
// exp(r) = 1 + r + r^2 P(r) with a degree-5 polynomial P (the classic single-precision
// minimax coefficients of the Cephes expf); 2^n is built in the exponent bits.
// Accuracy: <= 2 ulp against Double exp over [-87.3, 88.37] (tested in SIMDMathTests).
// Below -87.33 the result is exactly 0 (the true value is subnormal or smaller: < 1.2e-38);
// above 88.376 (= 127.5 ln 2, so that 2^n stays a normal number) it is +inf although the
// true value up to 88.72 is finite: the kernels only evaluate exp at arguments <= 0.
// NaN propagates; exp(-inf) = 0.
//
// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|): no cancellation for large |x|;
// for |x| < 0.25 the odd Taylor series to x^15 avoids the 1 - e cancellation. Accuracy: a few ulp (tested).

@usableFromInline let expLowerBound: Float = -87.33654   // exp below this < FLT_MIN: return 0
@usableFromInline let expUpperBound: Float = 88.37626    // 127.5 ln 2: above this, +inf

@inlinable @inline(__always)
func simdExp(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let log2e = SIMD8<Float>(repeating: 1.44269504088896341)
    let magic = SIMD8<Float>(repeating: 12582912.0)  // 1.5 * 2^23
    // Clamp into the domain where 2^n is a normal number; the masks below fix the ends.
    let xc = x.clamped(lowerBound: SIMD8(repeating: expLowerBound),
                       upperBound: SIMD8(repeating: expUpperBound))
    // t = round(x log2e) + magic: the low mantissa bits of t hold n.
    let tn = magic.addingProduct(xc, log2e)
    let n = tn - magic
    // r = x - n ln2 with ln2 = c1 + c2 (c1 exact in few bits: n*c1 exact).
    var r = xc.addingProduct(n, SIMD8(repeating: -0.693359375))
    r = r.addingProduct(n, SIMD8(repeating: 2.12194440e-4))
    let r2 = r * r
    var p = SIMD8<Float>(repeating: 1.9875691500e-4)
    p = p * r + SIMD8(repeating: 1.3981999507e-3)
    p = p * r + SIMD8(repeating: 8.3334519073e-3)
    p = p * r + SIMD8(repeating: 4.1665795894e-2)
    p = p * r + SIMD8(repeating: 1.6666665459e-1)
    p = p * r + SIMD8(repeating: 5.0000001201e-1)
    let y = (p * r2 + r) + SIMD8(repeating: 1)
    // 2^n: (n + 127) << 23 from the integer bits of tn (bits of magic are 0x4B400000).
    let ni = unsafeBitCast(tn, to: SIMD8<Int32>.self) &- SIMD8(repeating: 0x4B40_0000)
    // n is in [-126, 127] on the clamped domain: 2^n is a normal number.
    let scaleBits = (ni &+ SIMD8(repeating: 127)) &<< SIMD8(repeating: 23)
    let scale = unsafeBitCast(scaleBits, to: SIMD8<Float>.self)
    var result = y * scale
    result.replace(with: 0, where: x .< SIMD8(repeating: expLowerBound))
    result.replace(with: .infinity, where: x .> SIMD8(repeating: expUpperBound))
    result.replace(with: x, where: x .!= x)  // NaN in, NaN out (the clamp dropped it)
    return result
}

@inlinable @inline(__always)
func simdTanh(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let ax = x.replacing(with: -x, where: x .< 0)
    let e = simdExp(ax * SIMD8(repeating: -2))
    var big = (SIMD8<Float>(repeating: 1) - e) / (SIMD8<Float>(repeating: 1) + e)
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
    big.replace(with: -big, where: x .< 0)
    return big.replacing(with: small, where: ax .< SIMD8(repeating: 0.25))
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
