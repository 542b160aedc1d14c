// SIMD8 fast paths of the policy loss for float32 inputs with one advantage per row and no
// high-entropy mask. `row`: token-level ratios for the clipped family, cispo and sapo (a
// per-row IS ratio allowed; no off-policy mask). `rowConstant`: rows whose policy factors
// are constant (sequence-level ratios, vespo). Optional everywhere: old_logps, ref_logps
// (k3 KL, bias-corrected or not), delta, entropies (metric and bonus).
//
// Blocks of 8 fully valid tokens run in SIMD8<Float> with FMA; partial blocks, and any block
// whose results are not finite, run through `scalarToken` (the same maths as the generic
// kernel in PolicyLoss+Kernel.swift, one token at a time). Row sums are accumulated in Double.

typealias F8 = SIMD8<Float>

enum FastPolicyLoss {
    /// Per-row partials written by `row`.
    struct RowSums {
        var policy = 0.0, kl = 0.0, entropy = 0.0, entropyEff = 0.0, low = 0.0, high = 0.0, region = 0.0
        var cispo = 0.0
    }

    /// The high-entropy token mask: keep a valid token when its entropy >= thr.
    struct EntropyGate {
        var on = false, all0 = false, thr: Float = 0
        @inline(__always) func keep(_ e: Float) -> Bool { !on || (!all0 && e >= thr) }
        @inline(__always) func keep8(_ e: F8) -> SIMDMask<SIMD8<Int32>> {
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

    /// e^x on 8 lanes (see FastMath.exp; the inputs are finite here).
    @inline(__always)
    static func exp8(_ x: F8) -> F8 {
        // Clamp with selects: the stdlib's SIMD clamped/min/max are not inlined (measured).
        let lowX = F8(repeating: -104), highX = F8(repeating: 89)
        let xc = x.replacing(with: lowX, where: x .< lowX).replacing(with: highX, where: x .> highX)
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
        let ni = unsafeBitCast(t, to: SIMD8<Int32>.self) &- Int32(bitPattern: magic.bitPattern)
        let n1 = ni &>> 1, n2 = ni &- n1
        let s1 = unsafeBitCast((n1 &+ 127) &<< 23, to: F8.self)
        let s2 = unsafeBitCast((n2 &+ 127) &<< 23, to: F8.self)
        return p * s1 * s2
    }

    /// (e^d - 1, e^d - 1 - d) on 8 lanes (see FastMath.expm1AndKL).
    @inline(__always)
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
        if all(small) { return (d + klSmall, klSmall) }  // the common case: skip the exp
        let em1Big = exp8(d) - 1
        let em1 = em1Big.replacing(with: d + klSmall, where: small)
        let kl = (em1Big - d).replacing(with: klSmall, where: small)
        return (em1, kl)
    }

    @inline(__always)
    static func sum8(_ v: F8) -> Double {
        let d = SIMD8<Double>(v)
        return d.sum()
    }

    /// One token, scalar (partial blocks and non-finite blocks). Returns the loss parts and
    /// writes the gradient; mirrors the clipped branch of the generic kernel.
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

    /// Processes row `i` (T tokens at `base`). `old`/`ref` may alias `lp` (old absent: ratio 1;
    /// ref absent: useKL false). `grad`/`gradH` may be nil.
    @inline(__always)
    static func row(
        lp: UnsafePointer<Float>, old: UnsafePointer<Float>, ref: UnsafePointer<Float>,
        ent: UnsafePointer<Float>?, mask: UnsafePointer<UInt8>, T: Int, a: Float, f: Float, w: Double,
        p: Params, gate: EntropyGate, grad: UnsafeMutablePointer<Float>?, gradH: UnsafeMutablePointer<Float>?,
        gradHValue: Float
    ) -> RowSums {
        var sums = RowSums()
        var polAcc = SIMD8<Double>(), klAcc = SIMD8<Double>(), entAcc = SIMD8<Double>(), effAcc = SIMD8<Double>()
        let gradHV = F8(repeating: gradHValue)
        var lowAcc = F8(), highAcc = F8(), regAcc = F8(), cisAcc = F8()
        let aV = F8(repeating: a), fV = F8(repeating: f), epsHV = F8(repeating: p.epsH)
        let tauV = F8(repeating: a > 0 ? p.tauPos : p.tauNeg)
        let lo = F8(repeating: p.lo), hi = F8(repeating: p.hi), deltaV = F8(repeating: p.delta)
        let one = F8(repeating: 1), zero = F8()
        let wF = Float(w)
        let betaW = F8(repeating: Float(w) * p.beta)
        let aNeg = a < 0, aPos = a > 0
        var t = 0
        while t + 8 <= T {
            let m8 = UnsafeRawPointer(mask + t).loadUnaligned(as: UInt64.self)
            if m8 == 0 {
                if let g = grad { UnsafeMutableRawPointer(g + t).storeBytes(of: F8(), as: F8.self) }
                if let gh = gradH { UnsafeMutableRawPointer(gh + t).storeBytes(of: F8(), as: F8.self) }
                t += 8
                continue
            }
            var handled = false
            if m8 == 0x0101_0101_0101_0101 {
                let x = UnsafeRawPointer(lp + t).loadUnaligned(as: F8.self)
                let o = UnsafeRawPointer(old + t).loadUnaligned(as: F8.self)
                let r = exp8(x - o)
                var c1 = r
                var l: F8, gTok: F8
                switch p.kind {
                case 1:  // cispo: -sg(min(r, eps_high)) A lp
                    let cr = r.replacing(with: epsHV, where: r .> epsHV)
                    l = -(cr * aV) * x
                    gTok = -(cr * aV)
                case 2:  // sapo: -(4 / tau) sigmoid(tau (r - 1)) A
                    let sg = one / (one + exp8(-(tauV * (r - one))))
                    l = -((sg * 4) / tauV) * aV
                    gTok = -4 * sg * (one - sg) * aV * r
                default:  // clipped family
                    var dc1 = one
                    if p.useDelta {
                        c1 = r.replacing(with: deltaV, where: r .>= deltaV)
                        dc1 = one.replacing(with: zero, where: r .>= deltaV)
                    }
                    let c2 = r.replacing(with: lo, where: r .< lo).replacing(with: hi, where: r .> hi)
                    let dc2 = zero.replacing(with: one, where: (r .> lo) .& (r .< hi))
                    let v1 = c1 * aV, v2 = c2 * aV
                    let g = (aV * (dc1 + dc2) * 0.5)
                        .replacing(with: aV * dc1, where: v1 .< v2)
                        .replacing(with: aV * dc2, where: v1 .> v2)
                    l = -v1.replacing(with: v2, where: v2 .< v1)
                    gTok = -g * r
                }
                // Per-token multiplier: the row's f, times the high-entropy mask.
                let e8 = ent.map { UnsafeRawPointer($0 + t).loadUnaligned(as: F8.self) } ?? zero
                let keep = gate.keep8(e8)
                let fTok = gate.on ? zero.replacing(with: fV, where: keep) : fV
                l = fTok * l
                gTok = fTok * gTok
                var klv = zero
                if p.useKL {
                    let rf = UnsafeRawPointer(ref + t).loadUnaligned(as: F8.self)
                    let d = rf - x
                    let (em1, kl0) = expm1AndKL8(d)
                    var dkl = -em1
                    klv = kl0
                    if p.bias { dkl = dkl * r + kl0 * r; klv = kl0 * r }
                    gTok = gTok * wF + betaW * dkl
                } else {
                    gTok = gTok * wF
                }
                // Every lane finite: commit; otherwise redo the block in scalar code.
                let chk = l + klv + gTok
                let nanIfNotFinite = chk - chk
                if !any(nanIfNotFinite .!= nanIfNotFinite) {
                    polAcc += SIMD8<Double>(l)
                    klAcc += SIMD8<Double>(klv)
                    if p.kind == 1 && aPos { cisAcc += zero.replacing(with: one, where: r .> epsHV) }
                    if p.kind == 0 && aNeg { let isLow = c1 .< lo; lowAcc += zero.replacing(with: one, where: isLow); regAcc += zero.replacing(with: one, where: isLow) }
                    if p.kind == 0 && aPos { let isHigh = c1 .> hi; highAcc += zero.replacing(with: one, where: isHigh); regAcc += zero.replacing(with: one, where: isHigh) }
                    if let gp = grad { UnsafeMutableRawPointer(gp + t).storeBytes(of: gTok, as: F8.self) }
                    if ent != nil {
                        entAcc += SIMD8<Double>(e8)
                        effAcc += SIMD8<Double>(zero.replacing(with: e8, where: keep))
                    }
                    if let gh = gradH {
                        UnsafeMutableRawPointer(gh + t).storeBytes(of: zero.replacing(with: gradHV, where: keep), as: F8.self)
                    }
                    handled = true
                }
            }
            if !handled {
                for k in t..<(t + 8) { scalarAt(k) }
            }
            t += 8
        }
        while t < T { scalarAt(t); t += 1 }

        @inline(__always) func scalarAt(_ k: Int) {
            if mask[k] == 0 {
                grad?[k] = 0
                gradH?[k] = 0
                return
            }
            let e = ent?[k] ?? 0
            let keep = gate.keep(e)
            let g = scalarToken(lp: lp[k], old: old[k], ref: ref[k], a: a, f: keep ? f : 0, w: w, p: p, sums: &sums)
            grad?[k] = g
            if ent != nil {
                sums.entropy += Double(e)
                if keep { sums.entropyEff += Double(e) }
            }
            gradH?[k] = keep ? gradHValue : 0
        }

        sums.policy += polAcc.sum()
        sums.kl += klAcc.sum()
        sums.entropy += entAcc.sum()
        sums.entropyEff += effAcc.sum()
        sums.low += Double(lowAcc.sum())
        sums.high += Double(highAcc.sum())
        sums.region += Double(regAcc.sum())
        sums.cispo += Double(cisAcc.sum())
        return sums
    }

    /// Sums of a row whose policy factors are constant (see rowConstant).
    struct ConstantRowSums {
        var policy = 0.0, kl = 0.0, klRaw = 0.0, entropy = 0.0, entropyEff = 0.0
    }

    /// A row whose per-token policy loss is `lC + lpCoef * lp` with a constant direct gradient
    /// `gDirect` (sequence-level ratios with one advantage per row, or vespo's row weight; the
    /// multipliers already folded in). Per token only the k3 KL varies: kl (times `r` when
    /// `bias`), gradient w (gDirect + beta dkl). Returns the row sums (policy, KL, KL before the
    /// bias factor, entropy); the caller adds the sequence-ratio coupling.
    @inline(__always)
    static func rowConstant(
        lp: UnsafePointer<Float>, ref: UnsafePointer<Float>, ent: UnsafePointer<Float>?,
        mask: UnsafePointer<UInt8>, T: Int, w: Double, lC: Float, lpCoef: Float, gDirect: Float,
        beta: Float, useKL: Bool, bias: Bool, r: Float, gate: EntropyGate,
        grad: UnsafeMutablePointer<Float>?, gradH: UnsafeMutablePointer<Float>?, gradHValue: Float
    ) -> ConstantRowSums {
        var sums = ConstantRowSums()
        var polAcc = SIMD8<Double>(), klAcc = SIMD8<Double>(), rawAcc = SIMD8<Double>(), entAcc = SIMD8<Double>()
        var effAcc = SIMD8<Double>()
        let gradHV = F8(repeating: gradHValue), zero = F8(), one = F8(repeating: 1)
        let wF = Float(w)
        let lCV = F8(repeating: lC), coefV = F8(repeating: lpCoef), gV = F8(repeating: gDirect)
        let betaV = F8(repeating: beta), rV = F8(repeating: r)

        @inline(__always) func scalarAt(_ k: Int) {
            if mask[k] == 0 {
                grad?[k] = 0
                gradH?[k] = 0
                return
            }
            let x = lp[k]
            let e = ent?[k] ?? 0
            let keep = gate.keep(e)
            let em: Float = keep ? 1 : 0
            sums.policy += Double(em * (lC + lpCoef * x))
            var g = Double(em * gDirect)
            if useKL {
                let (em1, kl0) = FastMath.expm1AndKL(ref[k] - x)
                sums.klRaw += Double(kl0)
                sums.kl += Double(bias ? kl0 * r : kl0)
                g += Double(beta) * Double(bias ? -em1 * r : -em1)
            }
            grad?[k] = Float(w * g)
            if ent != nil {
                sums.entropy += Double(e)
                if keep { sums.entropyEff += Double(e) }
            }
            gradH?[k] = keep ? gradHValue : 0
        }

        var t = 0
        while t + 8 <= T {
            let m8 = UnsafeRawPointer(mask + t).loadUnaligned(as: UInt64.self)
            if m8 == 0 {
                if let g = grad { UnsafeMutableRawPointer(g + t).storeBytes(of: F8(), as: F8.self) }
                if let gh = gradH { UnsafeMutableRawPointer(gh + t).storeBytes(of: F8(), as: F8.self) }
                t += 8
                continue
            }
            var handled = false
            if m8 == 0x0101_0101_0101_0101 {
                let x = UnsafeRawPointer(lp + t).loadUnaligned(as: F8.self)
                let e8 = ent.map { UnsafeRawPointer($0 + t).loadUnaligned(as: F8.self) } ?? zero
                let keep = gate.keep8(e8)
                let em = gate.on ? zero.replacing(with: one, where: keep) : one
                let l = em * (lCV + coefV * x)
                var g = em * gV
                var klv = F8(), raw = F8()
                if useKL {
                    let d = UnsafeRawPointer(ref + t).loadUnaligned(as: F8.self) - x
                    let (em1, kl0) = expm1AndKL8(d)
                    raw = kl0
                    klv = bias ? kl0 * rV : kl0
                    g = g + betaV * (bias ? -em1 * rV : -em1)
                }
                g = g * wF
                let chk = l + klv + g
                let nanIfNotFinite = chk - chk
                if !any(nanIfNotFinite .!= nanIfNotFinite) {
                    polAcc += SIMD8<Double>(l)
                    klAcc += SIMD8<Double>(klv)
                    rawAcc += SIMD8<Double>(raw)
                    if let gp = grad { UnsafeMutableRawPointer(gp + t).storeBytes(of: g, as: F8.self) }
                    if ent != nil {
                        entAcc += SIMD8<Double>(e8)
                        effAcc += SIMD8<Double>(zero.replacing(with: e8, where: keep))
                    }
                    if let gh = gradH {
                        UnsafeMutableRawPointer(gh + t).storeBytes(of: zero.replacing(with: gradHV, where: keep), as: F8.self)
                    }
                    handled = true
                }
            }
            if !handled {
                for k in t..<(t + 8) { scalarAt(k) }
            }
            t += 8
        }
        while t < T { scalarAt(t); t += 1 }
        sums.policy += polAcc.sum()
        sums.kl += klAcc.sum()
        sums.klRaw += rawAcc.sum()
        sums.entropy += entAcc.sum()
        sums.entropyEff += effAcc.sum()
        return sums
    }
}
