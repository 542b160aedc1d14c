// SIMD8 fast paths of the policy loss for float32, bfloat16 and float16 inputs (8 lanes are
// loaded and widened to Float at a time; the maths is float32, as for the scalar Float path)
// with one advantage per row. `row`: token-level ratios for the clipped family, cispo and
// sapo (a per-row IS ratio allowed; the off-policy mask as a row multiplier). `rowConstant`:
// rows whose policy factors are constant (sequence-level ratios, vespo). Optional everywhere:
// old_logps, ref_logps (k3 KL, bias-corrected or not), delta, entropies (metric, bonus and the
// high-entropy mask).
//
// Every block of 8 tokens with at least one valid token runs in SIMD8<Float> with FMA; masked
// lanes are computed on whatever the buffer holds and then replaced by 0 (selects, so NaN/inf
// garbage never reaches a sum). A block whose valid lanes give a non-finite value, and the
// T mod 8 tail of a row, run through `scalarToken` (the maths of the generic kernel in
// PolicyLoss+Kernel.swift, one token at a time). Sums are kept in SIMD8<Float> for at most
// `flushBlocks` (+1) blocks (~128 tokens) and then added to per-row SIMD8<Double> partials, so no
// lane is converted to Double per token; a row's partials depend only on the row, hence the
// results are bitwise identical for any thread count.
//
// The row functions are generic over the element type and over a compile-time `FastRowShape`
// (KL term present, extras present: entropies, the entropy gate, the entropy-bonus gradient,
// the bias-corrected KL), so the common configurations compile to a loop without those
// branches and with every constant in a register.

typealias F8 = SIMD8<Float>
typealias M8 = SIMDMask<SIMD8<Int32>>
typealias Lanes8<T> = (T, T, T, T, T, T, T, T)

/// An element type of the fast paths' (B,T) inputs: 8 lanes loaded and widened to Float.
///
/// Every memory access and helper of the row loops is `@_transparent`, built from plain tuple
/// loads and stores that LLVM merges into vector moves. The loops are large in SIL (each stdlib
/// SIMD operator is a lane loop there), and in a caller that large the inliner leaves ordinary
/// `@inlinable` calls (UnsafeRawPointer.loadUnaligned, storeBytes) and big `@inline(__always)`
/// helpers as real calls, each of which spills every vector register (checked in the
/// disassembly).
protocol FastLossElement: LogitElement {
    static func widen8(_ p: UnsafePointer<Self>) -> F8
}

extension Float: FastLossElement {
    @_transparent
    static func widen8(_ p: UnsafePointer<Float>) -> F8 {
        let v = UnsafeRawPointer(p).assumingMemoryBound(to: Lanes8<Float>.self).pointee
        return F8(v.0, v.1, v.2, v.3, v.4, v.5, v.6, v.7)
    }
}

extension BFloat16: FastLossElement {
    /// The bits, shifted into the top half of a float32 (exact).
    @_transparent
    static func widen8(_ p: UnsafePointer<BFloat16>) -> F8 {
        let v = UnsafeRawPointer(p).assumingMemoryBound(to: Lanes8<UInt16>.self).pointee
        let w = SIMD8<UInt32>(UInt32(v.0), UInt32(v.1), UInt32(v.2), UInt32(v.3), UInt32(v.4), UInt32(v.5),
                              UInt32(v.6), UInt32(v.7))
        return unsafeBitCast(w &<< 16, to: F8.self)
    }
}

#if arch(x86_64) || arch(arm64)
extension Float16: FastLossElement {
    @_transparent
    static func widen8(_ p: UnsafePointer<Float16>) -> F8 {
        let v = UnsafeRawPointer(p).assumingMemoryBound(to: Lanes8<Float16>.self).pointee
        return F8(Float(v.0), Float(v.1), Float(v.2), Float(v.3), Float(v.4), Float(v.5), Float(v.6), Float(v.7))
    }
}
#endif

/// Compile-time flags of a row loop (see `FastPolicyLoss.row`).
protocol FastRowShape {
    /// ref_logps given: the k3 KL term.
    static var kl: Bool { get }
    /// Any of entropies, the high-entropy gate, grad_entropies or the bias-corrected KL.
    static var extras: Bool { get }
}

enum FastShapeLean: FastRowShape { static var kl: Bool { false }; static var extras: Bool { false } }
enum FastShapeLeanKL: FastRowShape { static var kl: Bool { true }; static var extras: Bool { false } }
enum FastShapeFull: FastRowShape { static var kl: Bool { false }; static var extras: Bool { true } }
enum FastShapeFullKL: FastRowShape { static var kl: Bool { true }; static var extras: Bool { true } }

/// The policy part of the token-level loss (see `FastPolicyLoss.row`): 0 the clipped family,
/// 1 cispo, 2 sapo (a compile-time constant of each specialisation). `delta`: the clipped
/// family with the delta cap (without it the capped ratio is the ratio itself).
protocol FastPolicyKind { static var id: Int { get }; static var delta: Bool { get } }
extension FastPolicyKind { static var delta: Bool { false } }
enum FastClipped: FastPolicyKind { static var id: Int { 0 } }
enum FastClippedDelta: FastPolicyKind { static var id: Int { 0 }; static var delta: Bool { true } }
enum FastCispo: FastPolicyKind { static var id: Int { 1 } }
enum FastSapo: FastPolicyKind { static var id: Int { 2 } }

enum FastPolicyLoss {
    /// Blocks summed in Float before the partial sums are added to the Double row sums.
    static let flushBlocks = 16

    /// Per-row partials written by `row`.
    struct RowSums {
        var policy = 0.0, kl = 0.0, entropy = 0.0, entropyEff = 0.0, low = 0.0, high = 0.0, region = 0.0
        var cispo = 0.0
    }

    /// The high-entropy token mask: keep a valid token when its entropy >= thr.
    struct EntropyGate {
        var on = false, all0 = false, thr: Float = 0
        @inline(__always) func keep(_ e: Float) -> Bool { !on || (!all0 && e >= thr) }
        @_transparent func keep8(_ e: F8) -> M8 {
            if !on { return F8() .== F8() }
            if all0 { return F8() .!= F8() }
            return e .>= F8(repeating: thr)
        }
    }

    struct Params {
        var lo: Float, hi: Float, delta: Float, useDelta: Bool
        var beta: Float, bias: Bool, useKL: Bool
        /// 0: clipped family, 1: cispo (cap epsH), 2: sapo (temperatures tauPos / tauNeg).
        var kind: Int, epsH: Float, tauPos: Float, tauNeg: Float
    }

    /// Splatted per-row constants of the policy maths.
    struct RowConstants {
        /// na = -a: the loss and gradient are negated products, -(x a) = x (-a) bit for bit.
        var a: F8, na: F8, lo: F8, hi: F8, epsH: F8, tau: F8
        /// delta, or +inf without the delta cap (r >= +inf only for r = +inf, whose block is
        /// not finite and redone in scalar code).
        var delta: F8
        /// The clip metric counts c1 < lowCount (lo when A < 0, else -inf) and c1 > highCount
        /// (hi when A > 0, else +inf); cispo counts r > highCount (eps_high when A > 0).
        var lowCount: F8, highCount: F8
        /// The negated tie gradient -a (dc1 + dc2) / 2 without the delta cap (dc1 = 1):
        /// nTie1 when dc2 = 0, nTie2 when dc2 = 1 (the same float operations, per row).
        var nTie1: F8, nTie2: F8
        var aNeg: Bool, aPos: Bool

        @_transparent
        init(a: Float, p: Params) {
            self.a = F8(repeating: a)
            na = F8(repeating: -a)
            let one: Float = 1, two: Float = 2
            nTie1 = F8(repeating: -a * one * 0.5)
            nTie2 = F8(repeating: -a * two * 0.5)
            lo = F8(repeating: p.lo)
            hi = F8(repeating: p.hi)
            epsH = F8(repeating: p.epsH)
            tau = F8(repeating: a > 0 ? p.tauPos : p.tauNeg)
            delta = F8(repeating: p.useDelta ? p.delta : .infinity)
            aNeg = a < 0
            aPos = a > 0
            lowCount = F8(repeating: aNeg ? p.lo : -.infinity)
            highCount = F8(repeating: aPos ? (p.kind == 1 ? p.epsH : p.hi) : .infinity)
        }
    }

    /// Typed views of one row's inputs and outputs (element type E for the (B,T) inputs).
    struct RowPointers<E: FastLossElement> {
        var lp: UnsafePointer<E>, old: UnsafePointer<E>?, ref: UnsafePointer<E>?, ent: UnsafePointer<E>?
        var mask: UnsafePointer<UInt8>
        var grad: UnsafeMutablePointer<Float>?, gradH: UnsafeMutablePointer<Float>?
    }

    /// The element types with a fast path.
    enum Element {
        case f32, bf16, f16
        /// Float16 conforms to LogitElement on x86_64 and arm64 only.
        #if arch(x86_64) || arch(arm64)
        static let hasFloat16 = true
        #else
        static let hasFloat16 = false
        #endif
    }

    /// Raw views of a whole batch for the fast paths: nil unless S is Float, BFloat16 or
    /// Float16 (Double inputs use the generic kernel) and every pointer is present.
    struct Inputs {
        var element: Element
        var lp: UnsafeRawPointer, old: UnsafeRawPointer?, ref: UnsafeRawPointer?, ent: UnsafeRawPointer?
        var mask: UnsafePointer<UInt8>
        var grad: UnsafeMutablePointer<Float>?, gradH: UnsafeMutablePointer<Float>?

        init?<S: LossStorage>(_ inp: PolicyLossInputs<S>, grad: UnsafeMutableRawPointer?,
                              gradH: UnsafeMutableRawPointer?) {
            if S.self == Float.self { element = .f32 }
            else if S.self == BFloat16.self { element = .bf16 }
            else if S.self == Float16.self, Element.hasFloat16 { element = .f16 }
            else { return nil }
            guard let lp = inp.logps.baseAddress, let mask = inp.mask.baseAddress else { return nil }
            self.lp = UnsafeRawPointer(lp)
            old = inp.oldLogps?.baseAddress.map { UnsafeRawPointer($0) }
            ref = inp.refLogps?.baseAddress.map { UnsafeRawPointer($0) }
            ent = inp.entropies?.baseAddress.map { UnsafeRawPointer($0) }
            self.mask = mask
            self.grad = grad?.assumingMemoryBound(to: Float.self)
            self.gradH = gradH?.assumingMemoryBound(to: Float.self)
        }

        /// Row pointers of the row starting at element `base`, typed as E.
        @inline(__always)
        func pointers<E: FastLossElement>(_ base: Int, _: E.Type) -> RowPointers<E> {
            @inline(__always) func typed(_ p: UnsafeRawPointer?) -> UnsafePointer<E>? {
                p.map { $0.assumingMemoryBound(to: E.self) + base }
            }
            return RowPointers(lp: lp.assumingMemoryBound(to: E.self) + base, old: typed(old), ref: typed(ref),
                               ent: typed(ent), mask: mask + base, grad: grad.map { $0 + base },
                               gradH: gradH.map { $0 + base })
        }

        /// `FastPolicyLoss.row` for the row at `base`.
        func row(base: Int, T: Int, a: Float, f: Float, w: Double, p: Params, gate: EntropyGate,
                 gradHValue: Float) -> RowSums {
            switch element {
            case .f32:
                return FastPolicyLoss.row(pointers(base, Float.self), T: T, a: a, f: f, w: w, p: p, gate: gate,
                                          gradHValue: gradHValue)
            case .bf16:
                return FastPolicyLoss.row(pointers(base, BFloat16.self), T: T, a: a, f: f, w: w, p: p, gate: gate,
                                          gradHValue: gradHValue)
            case .f16:
                #if arch(x86_64) || arch(arm64)
                return FastPolicyLoss.row(pointers(base, Float16.self), T: T, a: a, f: f, w: w, p: p, gate: gate,
                                          gradHValue: gradHValue)
                #else
                return RowSums()  // unreachable: Element.hasFloat16 is false
                #endif
            }
        }

        /// `FastPolicyLoss.rowConstant` for the row at `base`.
        func rowConstant(base: Int, T: Int, w: Double, lC: Float, lpCoef: Float, gDirect: Float, beta: Float,
                         useKL: Bool, bias: Bool, r: Float, gate: EntropyGate, gradHValue: Float) -> ConstantRowSums {
            switch element {
            case .f32:
                return FastPolicyLoss.rowConstant(pointers(base, Float.self), T: T, w: w, lC: lC, lpCoef: lpCoef,
                                                  gDirect: gDirect, beta: beta, useKL: useKL, bias: bias, r: r,
                                                  gate: gate, gradHValue: gradHValue)
            case .bf16:
                return FastPolicyLoss.rowConstant(pointers(base, BFloat16.self), T: T, w: w, lC: lC, lpCoef: lpCoef,
                                                  gDirect: gDirect, beta: beta, useKL: useKL, bias: bias, r: r,
                                                  gate: gate, gradHValue: gradHValue)
            case .f16:
                #if arch(x86_64) || arch(arm64)
                return FastPolicyLoss.rowConstant(pointers(base, Float16.self), T: T, w: w, lC: lC, lpCoef: lpCoef,
                                                  gDirect: gDirect, beta: beta, useKL: useKL, bias: bias, r: r,
                                                  gate: gate, gradHValue: gradHValue)
                #else
                return ConstantRowSums()
                #endif
            }
        }
    }

    // MARK: - SIMD helpers

    /// Lanes whose mask byte is non-zero (the bytes of m8 in memory order).
    @_transparent
    static func laneMask(_ m8: UInt64) -> M8 {
        let b = unsafeBitCast(m8, to: SIMD8<UInt8>.self)  // byte k: lane k (little-endian words)
        let v = SIMD8<Int32>(Int32(b[0]), Int32(b[1]), Int32(b[2]), Int32(b[3]), Int32(b[4]), Int32(b[5]),
                             Int32(b[6]), Int32(b[7]))
        return v .!= SIMD8<Int32>()
    }

    /// 1 in the lanes of `m`, else 0.
    @_transparent
    static func ones(_ m: M8) -> F8 { keep(F8(repeating: 1), m) }

    /// `v` in the lanes of `m`, else 0.
    @_transparent
    static func keep(_ v: F8, _ m: M8) -> F8 {
        unsafeBitCast(unsafeBitCast(v, to: SIMD8<UInt32>.self) & bits(m), to: F8.self)
    }

    /// The lanes of a mask as all-ones / all-zero words.
    @_transparent
    static func bits(_ m: M8) -> SIMD8<UInt32> { unsafeBitCast(m._storage, to: SIMD8<UInt32>.self) }

    /// `a` in the lanes of `m`, `b` elsewhere. Bitwise, on the mask's words: the stdlib's
    /// `replacing(with:where:)` reads the mask lane by lane as Bools, which LLVM's SLP vectorizer
    /// turns into byte packing and unpacking in large loops (seen in the disassembly).
    @_transparent
    static func blend(_ m: M8, _ a: F8, _ b: F8) -> F8 {
        let ai = unsafeBitCast(a, to: SIMD8<UInt32>.self), bi = unsafeBitCast(b, to: SIMD8<UInt32>.self)
        return unsafeBitCast(bi ^ ((ai ^ bi) & bits(m)), to: F8.self)
    }

    /// The sum of the 8 lanes, in a fixed order.
    @_transparent
    static func laneSum8(_ v: F8) -> Float {
        let h = v.lowHalf + v.highHalf
        let q = h.lowHalf + h.highHalf
        return q[0] + q[1]
    }

    /// true when a lane of `m` is set (an OR of the mask words: vtestps).
    @_transparent
    static func anyLane(_ m: M8) -> Bool {
        let w = m._storage
        let h = w.lowHalf | w.highHalf
        let q = h.lowHalf | h.highHalf
        return (q[0] | q[1]) != 0
    }

    @_transparent
    static func load8<E: FastLossElement>(_ p: UnsafePointer<E>, _ t: Int) -> F8 { E.widen8(p + t) }

    /// The 8 mask bytes at t as one word (byte k of the row is lane k - t).
    @_transparent
    static func maskWord(_ mask: UnsafePointer<UInt8>, _ t: Int) -> UInt64 {
        let b = UnsafeRawPointer(mask + t).assumingMemoryBound(to: Lanes8<UInt8>.self).pointee
        return UInt64(b.0) | UInt64(b.1) &<< 8 | UInt64(b.2) &<< 16 | UInt64(b.3) &<< 24
            | UInt64(b.4) &<< 32 | UInt64(b.5) &<< 40 | UInt64(b.6) &<< 48 | UInt64(b.7) &<< 56
    }

    @_transparent
    static func store8(_ v: F8, _ p: UnsafeMutablePointer<Float>, _ t: Int) {
        UnsafeMutableRawPointer(p + t).assumingMemoryBound(to: Lanes8<Float>.self).pointee =
            (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])
    }

    /// true when every lane of v is finite (v - v is 0 there and NaN elsewhere).
    @_transparent
    static func allFinite(_ v: F8) -> Bool {
        let d = v - v
        return !anyLane(d .!= d)
    }

    /// Adds the lanes of a Float partial to a Double partial and clears it.
    @_transparent
    static func flush(_ f: inout F8, into d: inout SIMD8<Double>) {
        d += SIMD8<Double>(Double(f[0]), Double(f[1]), Double(f[2]), Double(f[3]), Double(f[4]), Double(f[5]),
                           Double(f[6]), Double(f[7]))
        f = F8()
    }

    /// e^x on 8 lanes (see FastMath.exp; lanes agree with it bit for bit).
    @_transparent
    static func exp8(_ x: F8) -> F8 {
        // Clamp with selects: the stdlib's SIMD clamped/min/max are not inlined (measured).
        let lowX = F8(repeating: -104), highX = F8(repeating: 89)
        let xl = blend(x .< lowX, lowX, x)
        let xc = blend(xl .> highX, highX, xl)
        let magic: Float = 12582912
        let t = xc * 1.44269504 + magic
        let n = t - magic
        var r = xc.addingProduct(-n, F8(repeating: 0.693145752))
        r = r.addingProduct(-n, F8(repeating: 1.42860677e-06))
        var p = F8(repeating: 1.0 / 5040)
        p = F8(repeating: 1.0 / 720).addingProduct(p, r)
        p = F8(repeating: 1.0 / 120).addingProduct(p, r)
        p = F8(repeating: 1.0 / 24).addingProduct(p, r)
        p = F8(repeating: 1.0 / 6).addingProduct(p, r)
        p = F8(repeating: 0.5).addingProduct(p, r)
        p = F8(repeating: 1).addingProduct(p, r)
        p = F8(repeating: 1).addingProduct(p, r)
        // n sits in the low mantissa bits of t = 1.5 * 2^23 + n.
        let ni = unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000  // the bits of magic
        let n1 = ni &>> 1, n2 = ni &- n1
        let s1 = unsafeBitCast((n1 &+ 127) &<< 23, to: F8.self)
        let s2 = unsafeBitCast((n2 &+ 127) &<< 23, to: F8.self)
        return p * s1 * s2
    }

    /// (e^d - 1, e^d - 1 - d) on 8 lanes (see FastMath.expm1AndKL).
    @_transparent
    static func expm1AndKL8(_ d: F8) -> (F8, F8) {
        var q = F8(repeating: 1.0 / 39916800)
        q = F8(repeating: 1.0 / 3628800).addingProduct(q, d)
        q = F8(repeating: 1.0 / 362880).addingProduct(q, d)
        q = F8(repeating: 1.0 / 40320).addingProduct(q, d)
        q = F8(repeating: 1.0 / 5040).addingProduct(q, d)
        q = F8(repeating: 1.0 / 720).addingProduct(q, d)
        q = F8(repeating: 1.0 / 120).addingProduct(q, d)
        q = F8(repeating: 1.0 / 24).addingProduct(q, d)
        q = F8(repeating: 1.0 / 6).addingProduct(q, d)
        q = F8(repeating: 0.5).addingProduct(q, d)
        let klSmall = d * d * q
        let small = (d .< 1) .& (d .> -1)
        if !anyLane(.!small) { return (d + klSmall, klSmall) }  // the common case: skip the exp
        let em1Big = exp8(d) - 1
        let em1 = blend(small, d + klSmall, em1Big)
        let kl = blend(small, klSmall, em1Big - d)
        return (em1, kl)
    }

    /// exp8 of two blocks, the two Horner chains interleaved (each lane as exp8).
    @_transparent
    static func exp8x2(_ x: F8, _ y: F8) -> (F8, F8) {
        let lowX = F8(repeating: -104), highX = F8(repeating: 89)
        let xl = blend(x .< lowX, lowX, x), yl = blend(y .< lowX, lowX, y)
        let xc = blend(xl .> highX, highX, xl), yc = blend(yl .> highX, highX, yl)
        let magic: Float = 12582912
        let tx = xc * 1.44269504 + magic, ty = yc * 1.44269504 + magic
        let nx = tx - magic, ny = ty - magic
        var rx = xc.addingProduct(-nx, F8(repeating: 0.693145752))
        var ry = yc.addingProduct(-ny, F8(repeating: 0.693145752))
        rx = rx.addingProduct(-nx, F8(repeating: 1.42860677e-06))
        ry = ry.addingProduct(-ny, F8(repeating: 1.42860677e-06))
        var px = F8(repeating: 1.0 / 5040), py = F8(repeating: 1.0 / 5040)
        px = F8(repeating: 1.0 / 720).addingProduct(px, rx); py = F8(repeating: 1.0 / 720).addingProduct(py, ry)
        px = F8(repeating: 1.0 / 120).addingProduct(px, rx); py = F8(repeating: 1.0 / 120).addingProduct(py, ry)
        px = F8(repeating: 1.0 / 24).addingProduct(px, rx); py = F8(repeating: 1.0 / 24).addingProduct(py, ry)
        px = F8(repeating: 1.0 / 6).addingProduct(px, rx); py = F8(repeating: 1.0 / 6).addingProduct(py, ry)
        px = F8(repeating: 0.5).addingProduct(px, rx); py = F8(repeating: 0.5).addingProduct(py, ry)
        px = F8(repeating: 1).addingProduct(px, rx); py = F8(repeating: 1).addingProduct(py, ry)
        px = F8(repeating: 1).addingProduct(px, rx); py = F8(repeating: 1).addingProduct(py, ry)
        let bias: Int32 = 0x4B40_0000  // the bits of magic
        let nix = unsafeBitCast(tx, to: SIMD8<Int32>.self) &- bias
        let niy = unsafeBitCast(ty, to: SIMD8<Int32>.self) &- bias
        let n1x = nix &>> 1, n2x = nix &- n1x, n1y = niy &>> 1, n2y = niy &- n1y
        let ex = px * unsafeBitCast((n1x &+ 127) &<< 23, to: F8.self) * unsafeBitCast((n2x &+ 127) &<< 23, to: F8.self)
        let ey = py * unsafeBitCast((n1y &+ 127) &<< 23, to: F8.self) * unsafeBitCast((n2y &+ 127) &<< 23, to: F8.self)
        return (ex, ey)
    }

    /// expm1AndKL8 of two blocks, the two polynomial chains interleaved (each lane as
    /// expm1AndKL8): (e^d - 1, e^d - 1 - d) for d and for e.
    @_transparent
    static func expm1AndKL8x2(_ d: F8, _ e: F8) -> (F8, F8, F8, F8) {
        var q = F8(repeating: 1.0 / 39916800), u = F8(repeating: 1.0 / 39916800)
        q = F8(repeating: 1.0 / 3628800).addingProduct(q, d); u = F8(repeating: 1.0 / 3628800).addingProduct(u, e)
        q = F8(repeating: 1.0 / 362880).addingProduct(q, d); u = F8(repeating: 1.0 / 362880).addingProduct(u, e)
        q = F8(repeating: 1.0 / 40320).addingProduct(q, d); u = F8(repeating: 1.0 / 40320).addingProduct(u, e)
        q = F8(repeating: 1.0 / 5040).addingProduct(q, d); u = F8(repeating: 1.0 / 5040).addingProduct(u, e)
        q = F8(repeating: 1.0 / 720).addingProduct(q, d); u = F8(repeating: 1.0 / 720).addingProduct(u, e)
        q = F8(repeating: 1.0 / 120).addingProduct(q, d); u = F8(repeating: 1.0 / 120).addingProduct(u, e)
        q = F8(repeating: 1.0 / 24).addingProduct(q, d); u = F8(repeating: 1.0 / 24).addingProduct(u, e)
        q = F8(repeating: 1.0 / 6).addingProduct(q, d); u = F8(repeating: 1.0 / 6).addingProduct(u, e)
        q = F8(repeating: 0.5).addingProduct(q, d); u = F8(repeating: 0.5).addingProduct(u, e)
        let klD = d * d * q, klE = e * e * u
        let smallD = (d .< 1) .& (d .> -1), smallE = (e .< 1) .& (e .> -1)
        if !anyLane(.!(smallD .& smallE)) { return (d + klD, klD, e + klE, klE) }  // the common case: no exp
        let (xd, xe) = exp8x2(d, e)
        let bigD = xd - 1, bigE = xe - 1
        return (blend(smallD, d + klD, bigD), blend(smallD, klD, bigD - d),
                blend(smallE, e + klE, bigE), blend(smallE, klE, bigE - e))
    }

    // MARK: - Scalar tokens (tails and non-finite blocks)

    /// One token, scalar. Returns the gradient and adds the loss parts to `sums`; mirrors the
    /// clipped, cispo and sapo branches of the generic kernel.
    @inline(__always)
    static func scalarToken(
        lp: Float, old: Float, ref: Float, a: Float, f: Float, w: Double, p: Params, sums: inout RowSums
    ) -> Float {
        let r = FastMath.exp(lp - old)
        if p.kind == 1 {  // cispo
            let cr = r.isNaN ? r : Swift.min(r, p.epsH)
            if r > p.epsH && a > 0 { sums.cispo += 1 }
            return policyAndKL(l: -cr * a * lp, gPolicy: -cr * a, lp: lp, ref: ref, r: r, f: f, w: w, p: p,
                               sums: &sums)
        }
        if p.kind == 2 {  // sapo
            let tau = a > 0 ? p.tauPos : p.tauNeg
            let sg = 1 / (1 + FastMath.exp(-(tau * (r - 1))))
            return policyAndKL(l: -(sg * 4 / tau) * a, gPolicy: -4 * sg * (1 - sg) * a * r, lp: lp, ref: ref,
                               r: r, f: f, w: w, p: p, sums: &sums)
        }
        var c1 = r, dc1: Float = 1
        if p.useDelta && !(r < p.delta) { c1 = r.isNaN ? r : p.delta; dc1 = 0 }
        let c2 = Swift.min(Swift.max(r, p.lo), p.hi)
        let dc2: Float = (r > p.lo && r < p.hi) ? 1 : 0
        let v1 = c1 * a, v2 = c2 * a
        let l: Float, g: Float
        if v1.isNaN || v2.isNaN { l = .nan; g = .nan }
        else if v1 < v2 { l = -v1; g = a * dc1 }
        else if v1 > v2 { l = -v2; g = a * dc2 }
        else { l = -v1; g = a * (dc1 + dc2) / 2 }
        let isLow = c1 < p.lo && a < 0, isHigh = c1 > p.hi && a > 0
        if isLow { sums.low += 1 }
        if isHigh { sums.high += 1 }
        if isLow || isHigh { sums.region += 1 }
        return policyAndKL(l: l, gPolicy: -g * r, lp: lp, ref: ref, r: r, f: f, w: w, p: p, sums: &sums)
    }

    /// Adds the policy loss (times the row multiplier f) and the KL term of one token.
    @inline(__always)
    static func policyAndKL(
        l: Float, gPolicy: Float, lp: Float, ref: Float, r: Float, f: Float, w: Double, p: Params,
        sums: inout RowSums
    ) -> Float {
        sums.policy += Double(f * l)
        var gTok = Double(f * gPolicy)
        if p.useKL {
            let d = ref - lp
            let (em1, kl0) = FastMath.expm1AndKL(d)
            var kl = kl0, dkl = -em1
            if p.bias { dkl = dkl * r + kl * r; kl = kl * r }
            sums.kl += Double(kl)
            gTok += Double(p.beta) * Double(dkl)
        }
        return Float(w * gTok)
    }

    // MARK: - Token-level rows

    /// Processes one row of T tokens (see the file comment). `old` nil: ratio 1; `ref` nil: no
    /// KL (p.useKL false). `f` multiplies the policy term (IS ratio, off-policy drop), `w` is
    /// the row weight d loss / d (per-token loss). Dispatches to the specialised loop.
    @inline(__always)
    static func row<E: FastLossElement>(
        _ ptr: RowPointers<E>, T: Int, a: Float, f: Float, w: Double, p: Params, gate: EntropyGate,
        gradHValue: Float
    ) -> RowSums {
        let extras = ptr.ent != nil || gate.on || ptr.gradH != nil || (p.useKL && p.bias)
        switch (p.useKL, extras) {
        case (false, false): return rowOfKind(ptr, T, a, f, w, p, gate, gradHValue, FastShapeLean.self)
        case (true, false): return rowOfKind(ptr, T, a, f, w, p, gate, gradHValue, FastShapeLeanKL.self)
        case (false, true): return rowOfKind(ptr, T, a, f, w, p, gate, gradHValue, FastShapeFull.self)
        case (true, true): return rowOfKind(ptr, T, a, f, w, p, gate, gradHValue, FastShapeFullKL.self)
        }
    }

    /// `row`'s second dispatch level: the policy kind (the clipped family with or without the
    /// delta cap, cispo, sapo) for a row shape S.
    @inline(__always)
    static func rowOfKind<E: FastLossElement, S: FastRowShape>(
        _ ptr: RowPointers<E>, _ T: Int, _ a: Float, _ f: Float, _ w: Double, _ p: Params, _ gate: EntropyGate,
        _ gradHValue: Float, _: S.Type
    ) -> RowSums {
        switch p.kind {
        case 0:
            return p.useDelta ? rowLoop(ptr, T, a, f, w, p, gate, gradHValue, FastClippedDelta.self, S.self)
                : rowLoop(ptr, T, a, f, w, p, gate, gradHValue, FastClipped.self, S.self)
        case 1: return rowLoop(ptr, T, a, f, w, p, gate, gradHValue, FastCispo.self, S.self)
        default: return rowLoop(ptr, T, a, f, w, p, gate, gradHValue, FastSapo.self, S.self)
        }
    }

    /// Float partial sums of a row (flushed once `flushBlocks` blocks have been committed, so
    /// at most flushBlocks + 1 blocks are summed in Float) and their Double totals. A plain
    /// struct local to the row loop. `cnt` counts lanes as integers: a counted lane's mask
    /// word (-1) is subtracted, one vpsubd instead of a select and a float add.
    struct Partials {
        var pol = F8(), kl = F8(), raw = F8(), ent = F8(), eff = F8(), cnt = SIMD8<Int32>()
        var polD = SIMD8<Double>(), klD = SIMD8<Double>(), rawD = SIMD8<Double>(), entD = SIMD8<Double>()
        var effD = SIMD8<Double>(), cntD = 0.0
        var pending = 0

        /// Counts `blocks` committed blocks; flushes once `flushBlocks` are pending.
        @_transparent
        mutating func committed(_ blocks: Int = 1, kl useKL: Bool, raw useRaw: Bool, ent useEnt: Bool) {
            pending &+= blocks
            if pending >= flushBlocks { flush(kl: useKL, raw: useRaw, ent: useEnt) }
        }

        /// Adds the lanes of `m` to the count.
        @_transparent
        mutating func count(_ m: M8) { cnt &-= m._storage }

        @_transparent
        mutating func flush(kl useKL: Bool, raw useRaw: Bool, ent useEnt: Bool) {
            FastPolicyLoss.flush(&pol, into: &polD)
            if useKL { FastPolicyLoss.flush(&kl, into: &klD) }
            if useRaw { FastPolicyLoss.flush(&raw, into: &rawD) }
            if useEnt { FastPolicyLoss.flush(&ent, into: &entD); FastPolicyLoss.flush(&eff, into: &effD) }
            // At most 2 (flushBlocks + 1) per lane: the integer sum is exact in Double.
            let c4 = cnt.lowHalf &+ cnt.highHalf, c2 = c4.lowHalf &+ c4.highHalf
            cntD += Double(c2[0] &+ c2[1])
            cnt = SIMD8<Int32>()
            pending = 0
        }
    }

    /// The 8 tokens at t of a token-level row, scalar (a block with a non-finite value).
    @inline(never)
    static func scalarRowBlock<E: FastLossElement>(
        _ ptr: RowPointers<E>, _ t: Int, a: Float, f: Float, w: Double, p: Params, gate: EntropyGate,
        gradHValue: Float, sums: inout RowSums
    ) {
        for k in t..<(t + 8) {
            scalarRowToken(ptr, k, a: a, f: f, w: w, p: p, gate: gate, gradHValue: gradHValue, sums: &sums)
        }
    }

    /// Token k of a token-level row, scalar (tails and non-finite blocks).
    @inline(never)
    static func scalarRowToken<E: FastLossElement>(
        _ ptr: RowPointers<E>, _ k: Int, a: Float, f: Float, w: Double, p: Params, gate: EntropyGate,
        gradHValue: Float, sums: inout RowSums
    ) {
        if ptr.mask[k] == 0 {
            ptr.grad?[k] = 0
            ptr.gradH?[k] = 0
            return
        }
        let e = ptr.ent?[k].floatValue ?? 0
        let keep = gate.keep(e)
        let x = ptr.lp[k].floatValue
        let g = scalarToken(lp: x, old: ptr.old?[k].floatValue ?? x, ref: ptr.ref?[k].floatValue ?? x, a: a,
                            f: keep ? f : 0, w: w, p: p, sums: &sums)
        ptr.grad?[k] = g
        if ptr.ent != nil {
            sums.entropy += Double(e)
            if keep { sums.entropyEff += Double(e) }
        }
        ptr.gradH?[k] = keep ? gradHValue : 0
    }

    /// One block's results before they are committed: loss, KL and gradient lanes (0 where
    /// masked), the counted lanes, and for the extras the entropies and the bonus lanes.
    struct Block {
        var l: F8, kl: F8, g: F8, counted: M8, e8: F8, keepE: M8
        /// Lanes whose sum is finite exactly when every valid lane is finite.
        var check: F8 { @_transparent get { l + kl + g } }
    }

    /// The policy and KL maths of one block (x: log-probs, r: ratios, em1 / kl0: the k3 KL parts
    /// of ref - x), masked to the valid lanes.
    @_transparent
    static func finishBlock<E: FastLossElement, K: FastPolicyKind, S: FastRowShape>(
        _ x: F8, _ r: F8, _ em1: F8, _ kl0: F8, _ t: Int, _ valid: M8, _ ptr: RowPointers<E>,
        _ c: RowConstants, fV: F8, wF: F8, betaW: F8, nBetaW: F8, bias: Bool, gate: EntropyGate, _: K.Type,
        _: S.Type
    ) -> Block {
        var (l, gTok, counted) = K.id == 0 ? clippedToken(r: r, c, delta: K.delta)
            : K.id == 1 ? cispoToken(r: r, x: x, c) : sapoToken(r: r, c)
        // Per-token multiplier: the row's f, times the high-entropy mask.
        var fTok = fV
        var e8 = F8(), keepE = valid
        if S.extras {
            if let ent = ptr.ent { e8 = load8(ent, t) }
            if gate.on {
                let k8 = gate.keep8(e8)
                keepE = valid .& k8
                fTok = keep(fV, k8)
            }
        }
        l = fTok * l
        gTok = fTok * gTok
        var klv = F8()
        if S.kl {
            klv = kl0
            if bias {
                klv = kl0 * r
                gTok = gTok * wF + betaW * ((-em1) * r + kl0 * r)
            } else {
                gTok = gTok * wF + nBetaW * em1  // betaW (-em1), exactly
            }
        } else {
            gTok = gTok * wF
        }
        return Block(l: keep(l, valid), kl: keep(klv, valid), g: keep(gTok, valid), counted: counted .& valid,
                     e8: e8, keepE: keepE)
    }

    /// Adds a finite block to the partial sums and stores its gradients.
    @_transparent
    static func commitBlock<E: FastLossElement, K: FastPolicyKind, S: FastRowShape>(
        _ b: Block, _ t: Int, _ valid: M8, _ ptr: RowPointers<E>, gradHV: F8, hasEnt: Bool,
        acc: inout Partials, _: K.Type, _: S.Type
    ) {
        acc.pol += b.l
        if S.kl { acc.kl += b.kl }
        if K.id != 2 { acc.count(b.counted) }
        if let g = ptr.grad { store8(b.g, g, t) }
        if S.extras {
            if hasEnt {
                acc.ent += keep(b.e8, valid)
                acc.eff += keep(b.e8, b.keepE)
            }
            if let gh = ptr.gradH { store8(keep(gradHV, b.keepE), gh, t) }
        }
        acc.committed(kl: S.kl, raw: false, ent: hasEnt)
    }

    /// Adds two finite blocks (A at t, B at tB; B fully masked when !hasB, so all its lanes
    /// are 0) to the partial sums, the two blocks added first, and stores their gradients.
    @_transparent
    static func commitPair<E: FastLossElement, K: FastPolicyKind, S: FastRowShape>(
        _ bA: Block, _ bB: Block, _ t: Int, _ tB: Int, _ hasB: Bool, _ validA: M8, _ validB: M8,
        _ ptr: RowPointers<E>, gradHV: F8, hasEnt: Bool, acc: inout Partials, _: K.Type, _: S.Type
    ) {
        acc.pol += bA.l + bB.l
        if S.kl { acc.kl += bA.kl + bB.kl }
        if K.id != 2 { acc.count(bA.counted); acc.count(bB.counted) }
        if let g = ptr.grad { store8(bA.g, g, t); if hasB { store8(bB.g, g, tB) } }
        if S.extras {
            if hasEnt {
                acc.ent += keep(bA.e8, validA) + keep(bB.e8, validB)
                acc.eff += keep(bA.e8, bA.keepE) + keep(bB.e8, bB.keepE)
            }
            if let gh = ptr.gradH {
                store8(keep(gradHV, bA.keepE), gh, t)
                if hasB { store8(keep(gradHV, bB.keepE), gh, tB) }
            }
        }
        acc.committed(2, kl: S.kl, raw: false, ent: hasEnt)
    }

    /// Processes the row two blocks (16 tokens) at a time, the two blocks' exp and KL
    /// polynomials interleaved (each is a long dependency chain: one block alone leaves the
    /// core waiting on latency). A single trailing block runs as the first of a pair whose
    /// second block is fully masked; the T mod 8 tail runs in scalar code.
    @inline(never)
    static func rowLoop<E: FastLossElement, K: FastPolicyKind, S: FastRowShape>(
        _ ptr: RowPointers<E>, _ T: Int, _ a: Float, _ f: Float, _ w: Double, _ p: Params,
        _ gate: EntropyGate, _ gradHValue: Float, _: K.Type, _: S.Type
    ) -> RowSums {
        var sums = RowSums()
        let c = RowConstants(a: a, p: p)
        let fV = F8(repeating: f), wF = F8(repeating: Float(w)), betaW = F8(repeating: Float(w) * p.beta)
        let nBetaW = -betaW
        let gradHV = F8(repeating: gradHValue)
        let bias = S.extras && p.bias
        let hasEnt = S.extras && ptr.ent != nil
        let lp = ptr.lp, mask = ptr.mask, grad = ptr.grad
        var acc = Partials()

        var t = 0
        while t + 8 <= T {
            let hasB = t + 16 <= T
            let tB = hasB ? t + 8 : t
            let mA = maskWord(mask, t)
            let mB = hasB ? maskWord(mask, tB) : 0
            if mA | mB == 0 {
                if let g = grad { store8(F8(), g, t); if hasB { store8(F8(), g, tB) } }
                if S.extras, let gh = ptr.gradH { store8(F8(), gh, t); if hasB { store8(F8(), gh, tB) } }
                t = hasB ? t + 16 : t + 8
                continue
            }
            let validA = laneMask(mA), validB = laneMask(mB)
            let xA = load8(lp, t), xB = load8(lp, tB)
            var rA = F8(repeating: 1), rB = F8(repeating: 1)
            if let old = ptr.old { (rA, rB) = exp8x2(xA - load8(old, t), xB - load8(old, tB)) }
            var em1A = F8(), klA = F8(), em1B = F8(), klB = F8()
            if S.kl, let ref = ptr.ref {
                (em1A, klA, em1B, klB) = expm1AndKL8x2(load8(ref, t) - xA, load8(ref, tB) - xB)
            }
            let bA = finishBlock(xA, rA, em1A, klA, t, validA, ptr, c, fV: fV, wF: wF, betaW: betaW,
                                 nBetaW: nBetaW, bias: bias, gate: gate, K.self, S.self)
            let bB = finishBlock(xB, rB, em1B, klB, tB, validB, ptr, c, fV: fV, wF: wF, betaW: betaW,
                                 nBetaW: nBetaW, bias: bias, gate: gate, K.self, S.self)
            // Every valid lane finite: commit; otherwise redo the block in scalar code.
            if allFinite(bA.check + bB.check) {
                commitPair(bA, bB, t, tB, hasB, validA, validB, ptr, gradHV: gradHV, hasEnt: hasEnt, acc: &acc,
                           K.self, S.self)
            } else {
                if allFinite(bA.check) {
                    commitBlock(bA, t, validA, ptr, gradHV: gradHV, hasEnt: hasEnt, acc: &acc, K.self, S.self)
                } else {
                    scalarRowBlock(ptr, t, a: a, f: f, w: w, p: p, gate: gate, gradHValue: gradHValue, sums: &sums)
                }
                if hasB {
                    if allFinite(bB.check) {
                        commitBlock(bB, tB, validB, ptr, gradHV: gradHV, hasEnt: hasEnt, acc: &acc, K.self, S.self)
                    } else {
                        scalarRowBlock(ptr, tB, a: a, f: f, w: w, p: p, gate: gate, gradHValue: gradHValue, sums: &sums)
                    }
                }
            }
            t = hasB ? t + 16 : t + 8
        }
        acc.flush(kl: S.kl, raw: false, ent: hasEnt)
        while t < T {
            scalarRowToken(ptr, t, a: a, f: f, w: w, p: p, gate: gate, gradHValue: gradHValue, sums: &sums)
            t += 1
        }

        sums.policy += acc.polD.sum()
        sums.kl += acc.klD.sum()
        sums.entropy += acc.entD.sum()
        sums.entropyEff += acc.effD.sum()
        // The counted lanes: clip low (A < 0) or high (A > 0) for the clipped family, clipped
        // ratios (A > 0) for cispo.
        if K.id == 0 {
            if c.aNeg { sums.low += acc.cntD } else if c.aPos { sums.high += acc.cntD }
            sums.region += acc.cntD
        } else if K.id == 1 {
            sums.cispo += acc.cntD
        }
        return sums
    }

    // MARK: - Rows with constant policy factors

    /// Sums of a row whose policy factors are constant (see rowConstant).
    struct ConstantRowSums {
        var policy = 0.0, kl = 0.0, klRaw = 0.0, entropy = 0.0, entropyEff = 0.0
    }

    /// A row whose per-token policy loss is `lC + lpCoef * lp` with a constant direct gradient
    /// `gDirect` (sequence-level ratios with one advantage per row, or vespo's row weight; the
    /// multipliers already folded in). Per token only the k3 KL varies: kl (times `r` when
    /// `bias`), gradient w (gDirect + beta dkl). Returns the row sums (policy, KL, KL before the
    /// bias factor, entropy); the caller adds the sequence-ratio coupling.
    /// Token k of a constant-factor row, scalar (tails and non-finite blocks).
    @inline(never)
    static func scalarConstantToken<E: FastLossElement>(
        _ ptr: RowPointers<E>, _ k: Int, w: Double, lC: Float, lpCoef: Float, gDirect: Float, beta: Float,
        bias: Bool, r: Float, gate: EntropyGate, gradHValue: Float, sums: inout ConstantRowSums
    ) {
        if ptr.mask[k] == 0 {
            ptr.grad?[k] = 0
            ptr.gradH?[k] = 0
            return
        }
        let x = ptr.lp[k].floatValue
        let e = ptr.ent?[k].floatValue ?? 0
        let keep = gate.keep(e)
        let em: Float = keep ? 1 : 0
        sums.policy += Double(em * (lC + lpCoef * x))
        var g = Double(em * gDirect)
        if let ref = ptr.ref {
            let (em1, kl0) = FastMath.expm1AndKL(ref[k].floatValue - x)
            sums.klRaw += Double(kl0)
            sums.kl += Double(bias ? kl0 * r : kl0)
            g += Double(beta) * Double(bias ? -em1 * r : -em1)
        }
        ptr.grad?[k] = Float(w * g)
        if ptr.ent != nil {
            sums.entropy += Double(e)
            if keep { sums.entropyEff += Double(e) }
        }
        ptr.gradH?[k] = keep ? gradHValue : 0
    }

    /// A row whose per-token policy loss is `lC + lpCoef * lp` with a constant direct gradient
    /// `gDirect` (sequence-level ratios with one advantage per row, or vespo's row weight; the
    /// multipliers already folded in). Per token only the k3 KL varies: kl (times `r` when
    /// `bias`), gradient w (gDirect + beta dkl). Returns the row sums (policy, KL, KL before the
    /// bias factor, entropy); the caller adds the sequence-ratio coupling. `ptr.ref` is read
    /// only when `useKL`.
    @inline(never)
    static func rowConstant<E: FastLossElement>(
        _ ptr: RowPointers<E>, T: Int, w: Double, lC: Float, lpCoef: Float, gDirect: Float,
        beta: Float, useKL: Bool, bias: Bool, r: Float, gate: EntropyGate, gradHValue: Float
    ) -> ConstantRowSums {
        var sums = ConstantRowSums()
        var ptr = ptr
        if !useKL { ptr.ref = nil }
        let lp = ptr.lp, mask = ptr.mask, grad = ptr.grad, gradH = ptr.gradH, ent = ptr.ent, ref = ptr.ref
        let gradHV = F8(repeating: gradHValue), one = F8(repeating: 1)
        let wF = F8(repeating: Float(w))
        let lCV = F8(repeating: lC), coefV = F8(repeating: lpCoef), gV = F8(repeating: gDirect)
        let betaV = F8(repeating: beta), rV = F8(repeating: r)
        var acc = Partials()

        var t = 0
        while t + 8 <= T {
            let m8 = maskWord(mask, t)
            if m8 == 0 {
                if let g = grad { store8(F8(), g, t) }
                if let gh = gradH { store8(F8(), gh, t) }
                t += 8
                continue
            }
            let valid = laneMask(m8)
            let x = load8(lp, t)
            let e8 = ent.map { load8($0, t) } ?? F8()
            let k8 = gate.keep8(e8)
            let keepE = valid .& k8
            let em = gate.on ? ones(k8) : one
            var l = em * (lCV + coefV * x)
            var g = em * gV
            var klv = F8(), raw = F8()
            if let ref {
                let (em1, kl0) = expm1AndKL8(load8(ref, t) - x)
                raw = kl0
                klv = bias ? kl0 * rV : kl0
                g = g + betaV * (bias ? -em1 * rV : -em1)
            }
            g = g * wF
            l = keep(l, valid)
            klv = keep(klv, valid)
            raw = keep(raw, valid)
            g = keep(g, valid)
            if allFinite(l + klv + g) {
                acc.pol += l
                acc.kl += klv
                acc.raw += raw
                if let gp = grad { store8(g, gp, t) }
                if ent != nil {
                    acc.ent += keep(e8, valid)
                    acc.eff += keep(e8, keepE)
                }
                if let gh = gradH { store8(keep(gradHV, keepE), gh, t) }
                acc.committed(kl: true, raw: true, ent: true)
            } else {
                for k in t..<(t + 8) {
                    scalarConstantToken(ptr, k, w: w, lC: lC, lpCoef: lpCoef, gDirect: gDirect, beta: beta,
                                        bias: bias, r: r, gate: gate, gradHValue: gradHValue, sums: &sums)
                }
            }
            t += 8
        }
        acc.flush(kl: true, raw: true, ent: true)
        while t < T {
            scalarConstantToken(ptr, t, w: w, lC: lC, lpCoef: lpCoef, gDirect: gDirect, beta: beta,
                                bias: bias, r: r, gate: gate, gradHValue: gradHValue, sums: &sums)
            t += 1
        }
        sums.policy += acc.polD.sum()
        sums.kl += acc.klD.sum()
        sums.klRaw += acc.rawD.sum()
        sums.entropy += acc.entD.sum()
        sums.entropyEff += acc.effD.sum()
        return sums
    }

    // MARK: - Policy maths of the token-level path

    /// PPO clipping (grpo, bnpo, dr_grpo, dapo, luspo): -min(c1 A, clamp(r, lo, hi) A) with the
    /// optional delta cap c1 = min(r, delta); torch's gradient conventions (clamp passes none on
    /// its bounds, min splits ties). Returns the loss, d l / d lp and the lanes counted by the
    /// clip metric (c1 < lo when A < 0, c1 > hi when A > 0).
    @_transparent
    static func clippedToken(r: F8, _ c: RowConstants, delta: Bool) -> (l: F8, g: F8, counted: M8) {
        if !delta {
            // No cap (delta = +inf): c1 = r and dc1 = 1 (r >= +inf only for r = +inf, whose
            // block is not finite and redone in scalar code), so a dc1 = a and the tie
            // gradient is a per-row constant picked by dc2.
            let rl = blend(r .< c.lo, c.lo, r)
            let c2 = blend(rl .> c.hi, c.hi, rl)
            let inside = (r .> c.lo) .& (r .< c.hi)
            let nv1 = r * c.na, nv2 = c2 * c.na
            let ngTie = blend(inside, c.nTie2, c.nTie1)
            let ng = blend(nv1 .< nv2, c.na * ones(inside), blend(nv1 .> nv2, c.na, ngTie))
            let l = blend(nv2 .> nv1, nv2, nv1)
            let counted = (r .< c.lowCount) .| (r .> c.highCount)
            return (l, ng * r, counted)
        }
        let one = F8(repeating: 1), zero = F8()
        let capped = r .>= c.delta
        let c1 = blend(capped, c.delta, r)
        let dc1 = blend(capped, zero, one)
        let rl = blend(r .< c.lo, c.lo, r)
        let c2 = blend(rl .> c.hi, c.hi, rl)
        let dc2 = ones((r .> c.lo) .& (r .< c.hi))
        // With nv = -v and ng = -g (negated products, exact): v1 > v2 is nv1 < nv2.
        let nv1 = c1 * c.na, nv2 = c2 * c.na
        let ngTie = c.na * (dc1 + dc2) * 0.5
        let ng = blend(nv1 .< nv2, c.na * dc2, blend(nv1 .> nv2, c.na * dc1, ngTie))
        let l = blend(nv2 .> nv1, nv2, nv1)
        let counted = (c1 .< c.lowCount) .| (c1 .> c.highCount)
        return (l, ng * r, counted)
    }

    /// cispo: -sg(min(r, eps_high)) A lp. Counted: r > eps_high when A > 0.
    @_transparent
    static func cispoToken(r: F8, x: F8, _ c: RowConstants) -> (l: F8, g: F8, counted: M8) {
        let cr = blend(r .> c.epsH, c.epsH, r)
        let counted = r .> c.highCount
        return ((cr * c.na) * x, cr * c.na, counted)
    }

    /// sapo: -(4 / tau) sigmoid(tau (r - 1)) A. Nothing counted.
    @_transparent
    static func sapoToken(r: F8, _ c: RowConstants) -> (l: F8, g: F8, counted: M8) {
        let one = F8(repeating: 1)
        let sg = one / (one + exp8(-(c.tau * (r - one))))
        let l = ((sg * 4) / c.tau) * c.na
        let g = -4 * sg * (one - sg) * c.a * r
        return (l, g, F8() .!= F8())
    }
}
