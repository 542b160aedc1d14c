// C ABI: float32 -> bfloat16 / float16 / float32 rounding (grpo_convert_f32).
import CGRPOBridge

/// out[i] = E(scale * in[i]) with E's rounding (LogitElement.store8: nearest, ties to even), 8
/// lanes at a time.
func convertF32<E: LogitElement>(_ input: UnsafeBufferPointer<Float>, _ scale: Float,
                                 _ out: UnsafeMutablePointer<E>) {
    guard let src = input.baseAddress else { return }
    let n = input.count
    let s = SIMD8<Float>(repeating: scale)
    var i = 0
    while i + 8 <= n {
        E.store8(Float.load8(src + i) * s, out + i)
        i += 8
    }
    while i < n {
        out[i] = E(roundingFloat: src[i] * scale)
        i += 1
    }
}

@c @implementation
public func grpo_convert_f32(
    _ input: UnsafePointer<Float>?, _ n: Int, _ scale: Float, _ outDtype: Int32,
    _ out: UnsafeMutableRawPointer?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let src = try inputView(input, n, "in")
        guard n > 0 else { return }
        guard let out else { throw GRPOError(.null, "out is NULL") }
        switch outDtype {
        case Int32(GRPO_BF16.rawValue): convertF32(src, scale, out.assumingMemoryBound(to: BFloat16.self))
        case Int32(GRPO_F32.rawValue): convertF32(src, scale, out.assumingMemoryBound(to: Float.self))
        case Int32(GRPO_F16.rawValue):
            #if arch(x86_64) || arch(arm64)
            convertF32(src, scale, out.assumingMemoryBound(to: Float16.self))
            #else
            throw GRPOError(.dtype, "float16 output is not supported on this architecture")
            #endif
        default:
            throw GRPOError(.dtype, "out_dtype must be GRPO_BF16 (2), GRPO_F16 (3) or GRPO_F32 (0), got \(outDtype)")
        }
    }
}
