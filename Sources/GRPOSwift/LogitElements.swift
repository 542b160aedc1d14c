// Element types the log-prob kernels read (logits) and write (logit gradients), each widened
// to Float in SIMD8 groups. Arithmetic is always in Float (Double for Double inputs, which
// use the separate scalar f64 kernels).

/// A bfloat16 value stored as its 16 bits (the upper half of a binary32).
public struct BFloat16: Sendable, Equatable {
    public var bits: UInt16
    public init(bits: UInt16) { self.bits = bits }
    /// Rounds to nearest even; NaN stays a (quiet) NaN.
    public init(_ x: Float) {
        let u = x.bitPattern
        if x.isNaN { bits = UInt16(truncatingIfNeeded: (u >> 16) | 0x40); return }
        bits = UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
    }
    public var floatValue: Float { Float(bitPattern: UInt32(bits) << 16) }
}

/// A storage type for logits and logit gradients: loads/stores 8 elements as SIMD8<Float>.
public protocol LogitElement: Sendable {
    static var dtypeName: String { get }
    static func load8(_ p: UnsafePointer<Self>) -> SIMD8<Float>
    static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Self>)
    var floatValue: Float { get }
    init(roundingFloat: Float)
}

extension Float: LogitElement {
    public static var dtypeName: String { "float32" }
    @inline(__always)
    public static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always)
    public static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }
    @inline(__always) public var floatValue: Float { self }
    @inline(__always) public init(roundingFloat x: Float) { self = x }
}

extension BFloat16: LogitElement {
    public static var dtypeName: String { "bfloat16" }
    @inline(__always)
    public static func load8(_ p: UnsafePointer<BFloat16>) -> SIMD8<Float> {
        let h = UnsafeRawPointer(p).loadUnaligned(as: SIMD8<UInt16>.self)
        let w = SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16
        return unsafeBitCast(w, to: SIMD8<Float>.self)
    }
    @inline(__always)
    public static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<BFloat16>) {
        let u = unsafeBitCast(v, to: SIMD8<UInt32>.self)
        var r = (u &+ SIMD8(repeating: 0x7FFF) &+ ((u &>> 16) & SIMD8(repeating: 1))) &>> 16
        r.replace(with: (u &>> 16) | SIMD8(repeating: 0x40), where: v .!= v)  // NaN stays NaN
        UnsafeMutableRawPointer(p).storeBytes(of: SIMD8<UInt16>(truncatingIfNeeded: r),
                                              as: SIMD8<UInt16>.self)
    }
    @inline(__always) public init(roundingFloat x: Float) { self.init(x) }
}

#if arch(x86_64) || arch(arm64)
extension Float16: LogitElement {
    public static var dtypeName: String { "float16" }
    @inline(__always)
    public static func load8(_ p: UnsafePointer<Float16>) -> SIMD8<Float> {
        SIMD8<Float>(UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float16>.self))
    }
    @inline(__always)
    public static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float16>) {
        UnsafeMutableRawPointer(p).storeBytes(of: SIMD8<Float16>(v), as: SIMD8<Float16>.self)
    }
    @inline(__always) public var floatValue: Float { Float(self) }
    @inline(__always) public init(roundingFloat x: Float) { self = Float16(x) }
}
#endif
