// C ABI: log-probs and entropy from logits, the fused LM head, and the sgemm benchmark anchor.
import CGRPOBridge

enum LogitDType: Int32 {
    case f32 = 0, f64 = 1, bf16 = 2, f16 = 3
    var itemSize: Int { self == .f64 ? 8 : self == .f32 ? 4 : 2 }
    var name: String {
        switch self {
        case .f32: return "float32"
        case .f64: return "float64"
        case .bf16: return "bfloat16"
        case .f16: return "float16"
        }
    }
}

func logitDType(_ raw: Int32, _ what: String) throws(GRPOError) -> LogitDType {
    guard let d = LogitDType(rawValue: raw) else {
        throw GRPOError(.dtype, "\(what) must be 0 (float32), 1 (float64), 2 (bfloat16) or 3 (float16), got \(raw)")
    }
    return d
}

/// A typed read-only view of `count` elements of `T` at a raw pointer.
@inline(__always)
func rawInputView<T>(_ p: UnsafeRawPointer?, _ count: Int, _ name: String, as: T.Type)
    throws(GRPOError) -> UnsafeBufferPointer<T>
{
    try inputView(p?.assumingMemoryBound(to: T.self), count, name)
}

@inline(__always)
func rawOptionalInputView<T>(_ p: UnsafeRawPointer?, _ count: Int, _ name: String, as: T.Type)
    throws(GRPOError) -> UnsafeBufferPointer<T>?
{
    try optionalInputView(p?.assumingMemoryBound(to: T.self), count, name)
}

@inline(__always)
func rawOutputView<T>(_ p: UnsafeMutableRawPointer?, _ count: Int, _ name: String, as: T.Type)
    throws(GRPOError) -> UnsafeMutableBufferPointer<T>
{
    try outputView(p?.assumingMemoryBound(to: T.self), count, name)
}

@inline(__always)
func rawOptionalOutputView<T>(_ p: UnsafeMutableRawPointer?, _ count: Int, _ name: String, as: T.Type)
    throws(GRPOError) -> UnsafeMutableBufferPointer<T>?
{
    try optionalOutputView(p?.assumingMemoryBound(to: T.self), count, name)
}

func checkRows(_ n: Int, _ vocab: Int) throws(GRPOError) -> Int {
    guard n >= 0 else { throw GRPOError(.shape, "n must be >= 0, got \(n)") }
    guard vocab >= 1 else { throw GRPOError(.shape, "vocab must be >= 1, got \(vocab)") }
    return try checkedProduct(n, vocab, what: "logits (n x vocab)")
}

@c @implementation
public func grpo_selective_log_softmax(
    _ logits: UnsafeRawPointer?, _ dtype: Int32, _ n: Int, _ vocab: Int,
    _ targets: UnsafePointer<Int64>?, _ rowMask: UnsafePointer<UInt8>?, _ temperature: Double,
    _ logProbs: UnsafeMutableRawPointer?, _ entropy: UnsafeMutableRawPointer?,
    _ logsumexp: UnsafeMutablePointer<Double>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let dt = try logitDType(dtype, "dtype")
        let total = try checkRows(n, vocab)
        let t = try inputView(targets, n, "targets")
        let m = try optionalInputView(rowMask, n, "row_mask")
        let lse = try optionalOutputView(logsumexp, n, "logsumexp")
        func run<E: LogitElement>(_: E.Type) throws(GRPOError) {
            try LogProbs.forward(
                logits: rawInputView(logits, total, "logits", as: E.self), rows: n, vocab: vocab,
                targets: t, rowMask: m, temperature: temperature,
                logProbs: rawOutputView(logProbs, n, "log_probs", as: Float.self),
                entropy: rawOptionalOutputView(entropy, n, "entropy", as: Float.self), logSumExp: lse)
        }
        switch dt {
        case .f32: try run(Float.self)
        case .bf16: try run(BFloat16.self)
        case .f16: try run(Float16.self)
        case .f64:
            try LogProbs.forward(
                logits: rawInputView(logits, total, "logits", as: Double.self), rows: n, vocab: vocab,
                targets: t, rowMask: m, temperature: temperature,
                logProbs: rawOutputView(logProbs, n, "log_probs", as: Double.self),
                entropy: rawOptionalOutputView(entropy, n, "entropy", as: Double.self), logSumExp: lse)
        }
    }
}

@c @implementation
public func grpo_selective_log_softmax_backward(
    _ logits: UnsafeRawPointer?, _ dtype: Int32, _ n: Int, _ vocab: Int,
    _ targets: UnsafePointer<Int64>?, _ rowMask: UnsafePointer<UInt8>?, _ temperature: Double,
    _ logsumexp: UnsafePointer<Double>?, _ entropy: UnsafeRawPointer?,
    _ gradLogProbs: UnsafeRawPointer?, _ gradEntropy: UnsafeRawPointer?,
    _ gradLogits: UnsafeMutableRawPointer?, _ gradDType: Int32,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let dt = try logitDType(dtype, "dtype")
        let gdt = try logitDType(gradDType, "grad_dtype")
        guard gdt == .f32 || gdt == dt, !(dt == .f64 && gdt != .f64) else {
            throw GRPOError(.dtype,
                "grad_logits must be float32 or the logits' dtype (\(dt.name)); got \(gdt.name)")
        }
        let total = try checkRows(n, vocab)
        // In place only when the two buffers coincide exactly; any other overlap is an error.
        if let lp = logits, let gp = gradLogits, total > 0 {
            let a = UInt(bitPattern: lp), b = UInt(bitPattern: UnsafeRawPointer(gp))
            let (aBytes, o1) = total.multipliedReportingOverflow(by: dt.itemSize)
            let (bBytes, o2) = total.multipliedReportingOverflow(by: gdt.itemSize)
            if o1 || o2 { throw GRPOError(.overflow, "logits byte size overflows") }
            let overlap = a < b &+ UInt(bBytes) && b < a &+ UInt(aBytes)
            if overlap && !(a == b && gdt == dt) {
                throw GRPOError(.value,
                    "grad_logits overlaps logits without being the same buffer of the same dtype (in place)")
            }
        }
        let t = try inputView(targets, n, "targets")
        let m = try optionalInputView(rowMask, n, "row_mask")
        let lse = try optionalInputView(logsumexp, n, "logsumexp")
        if dt == .f64 {
            try LogProbs.backward(
                logits: rawInputView(logits, total, "logits", as: Double.self), rows: n, vocab: vocab,
                targets: t, rowMask: m, temperature: temperature, logSumExp: lse,
                entropy: rawOptionalInputView(entropy, n, "entropy", as: Double.self),
                gradLogProbs: rawOptionalInputView(gradLogProbs, n, "grad_log_probs", as: Double.self),
                gradEntropy: rawOptionalInputView(gradEntropy, n, "grad_entropy", as: Double.self),
                gradLogits: rawOutputView(gradLogits, total, "grad_logits", as: Double.self))
            return
        }
        let h = try rawOptionalInputView(entropy, n, "entropy", as: Float.self)
        if gradEntropy != nil && lse != nil && h == nil {
            throw GRPOError(.null, "entropy is required with grad_entropy when logsumexp is given")
        }
        let gl = try rawOptionalInputView(gradLogProbs, n, "grad_log_probs", as: Float.self)
        let gh = try rawOptionalInputView(gradEntropy, n, "grad_entropy", as: Float.self)
        func run<E: LogitElement, G: LogitElement>(_: E.Type, _: G.Type) throws(GRPOError) {
            try LogProbs.backward(
                logits: rawInputView(logits, total, "logits", as: E.self), rows: n, vocab: vocab,
                targets: t, rowMask: m, temperature: temperature, logSumExp: lse, entropy: h,
                gradLogProbs: gl, gradEntropy: gh,
                gradLogits: rawOutputView(gradLogits, total, "grad_logits", as: G.self))
        }
        switch (dt, gdt) {
        case (.f32, _): try run(Float.self, Float.self)
        case (.bf16, .bf16): try run(BFloat16.self, BFloat16.self)
        case (.bf16, _): try run(BFloat16.self, Float.self)
        case (.f16, .f16): try run(Float16.self, Float16.self)
        case (.f16, _): try run(Float16.self, Float.self)
        case (.f64, _): throw GRPOError(.internal, "unreachable dtype combination")
        }
    }
}

func lmHeadConfig(_ cfg: UnsafePointer<grpo_lm_head_config>?) throws(GRPOError) -> LMHeadConfig {
    let c = try configValue(cfg, "config")
    guard c.final_logit_softcapping >= 0 else {  // also rejects NaN
        throw GRPOError(.value,
            "final_logit_softcapping must be > 0 (or 0 for none), got \(c.final_logit_softcapping)")
    }
    return LMHeadConfig(temperature: c.temperature, logitScale: c.logit_scale,
                        finalLogitSoftcapping: c.final_logit_softcapping == 0 ? nil : c.final_logit_softcapping,
                        tileRows: c.tile_rows, tileCols: c.tile_cols)
}

func checkLMHeadSizes(_ n: Int, _ h: Int, _ v: Int) throws(GRPOError) -> (nh: Int, vh: Int) {
    guard n >= 0, h >= 1, v >= 1 else {
        throw GRPOError(.shape, "sizes must be n >= 0, hidden_size >= 1, vocab >= 1; got \(n), \(h), \(v)")
    }
    return (try checkedProduct(n, h, what: "hidden (n x hidden_size)"),
            try checkedProduct(v, h, what: "weight (vocab x hidden_size)"))
}

func fusedForwardC<E: LogitElement>(
    _ hidden: UnsafePointer<E>?, _ weight: UnsafePointer<E>?, _ bias: UnsafePointer<E>?,
    _ n: Int, _ hiddenSize: Int, _ vocab: Int, _ targets: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_lm_head_config>?,
    _ logProbs: UnsafeMutablePointer<Float>?, _ entropy: UnsafeMutablePointer<Float>?,
    _ logsumexp: UnsafeMutablePointer<Double>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let config = try lmHeadConfig(cfg)
        let (nh, vh) = try checkLMHeadSizes(n, hiddenSize, vocab)
        try FusedLMHead.forward(
            hidden: inputView(hidden, nh, "hidden"), weight: inputView(weight, vh, "weight"),
            bias: optionalInputView(bias, vocab, "bias"), rows: n, hiddenSize: hiddenSize, vocab: vocab,
            targets: inputView(targets, n, "targets"), config: config,
            logProbs: outputView(logProbs, n, "log_probs"), entropy: optionalOutputView(entropy, n, "entropy"),
            logSumExp: optionalOutputView(logsumexp, n, "logsumexp"))
    }
}

func fusedBackwardC<E: LogitElement>(
    _ hidden: UnsafePointer<E>?, _ weight: UnsafePointer<E>?, _ bias: UnsafePointer<E>?,
    _ n: Int, _ hiddenSize: Int, _ vocab: Int, _ targets: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_lm_head_config>?, _ logsumexp: UnsafePointer<Double>?,
    _ entropy: UnsafePointer<Float>?, _ gradLogProbs: UnsafePointer<Float>?,
    _ gradEntropy: UnsafePointer<Float>?, _ gradHidden: UnsafeMutablePointer<Float>?,
    _ gradWeight: UnsafeMutablePointer<Float>?, _ gradBias: UnsafeMutablePointer<Float>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let config = try lmHeadConfig(cfg)
        let (nh, vh) = try checkLMHeadSizes(n, hiddenSize, vocab)
        try FusedLMHead.backward(
            hidden: inputView(hidden, nh, "hidden"), weight: inputView(weight, vh, "weight"),
            bias: optionalInputView(bias, vocab, "bias"), rows: n, hiddenSize: hiddenSize, vocab: vocab,
            targets: inputView(targets, n, "targets"), config: config,
            logSumExp: inputView(logsumexp, n, "logsumexp"), entropy: optionalInputView(entropy, n, "entropy"),
            gradLogProbs: optionalInputView(gradLogProbs, n, "grad_log_probs"),
            gradEntropy: optionalInputView(gradEntropy, n, "grad_entropy"),
            gradHidden: optionalOutputView(gradHidden, nh, "grad_hidden"),
            gradWeight: optionalOutputView(gradWeight, vh, "grad_weight"),
            gradBias: optionalOutputView(gradBias, vocab, "grad_bias"))
    }
}

/// bfloat16 bits as BFloat16 (same layout: one UInt16).
@inline(__always)
func asBF16(_ p: UnsafePointer<UInt16>?) -> UnsafePointer<BFloat16>? {
    p.map { UnsafeRawPointer($0).assumingMemoryBound(to: BFloat16.self) }
}

@c @implementation
public func grpo_fused_log_probs_f32(
    _ hidden: UnsafePointer<Float>?, _ weight: UnsafePointer<Float>?, _ bias: UnsafePointer<Float>?,
    _ n: Int, _ hiddenSize: Int, _ vocab: Int, _ targets: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_lm_head_config>?,
    _ logProbs: UnsafeMutablePointer<Float>?, _ entropy: UnsafeMutablePointer<Float>?,
    _ logsumexp: UnsafeMutablePointer<Double>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    fusedForwardC(hidden, weight, bias, n, hiddenSize, vocab, targets, cfg, logProbs, entropy, logsumexp,
                  err, errlen)
}

@c @implementation
public func grpo_fused_log_probs_bf16(
    _ hidden: UnsafePointer<UInt16>?, _ weight: UnsafePointer<UInt16>?, _ bias: UnsafePointer<UInt16>?,
    _ n: Int, _ hiddenSize: Int, _ vocab: Int, _ targets: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_lm_head_config>?,
    _ logProbs: UnsafeMutablePointer<Float>?, _ entropy: UnsafeMutablePointer<Float>?,
    _ logsumexp: UnsafeMutablePointer<Double>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    fusedForwardC(asBF16(hidden), asBF16(weight), asBF16(bias), n, hiddenSize, vocab, targets, cfg, logProbs,
                  entropy, logsumexp, err, errlen)
}

@c @implementation
public func grpo_fused_log_probs_backward_f32(
    _ hidden: UnsafePointer<Float>?, _ weight: UnsafePointer<Float>?, _ bias: UnsafePointer<Float>?,
    _ n: Int, _ hiddenSize: Int, _ vocab: Int, _ targets: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_lm_head_config>?, _ logsumexp: UnsafePointer<Double>?,
    _ entropy: UnsafePointer<Float>?, _ gradLogProbs: UnsafePointer<Float>?,
    _ gradEntropy: UnsafePointer<Float>?, _ gradHidden: UnsafeMutablePointer<Float>?,
    _ gradWeight: UnsafeMutablePointer<Float>?, _ gradBias: UnsafeMutablePointer<Float>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    fusedBackwardC(hidden, weight, bias, n, hiddenSize, vocab, targets, cfg, logsumexp, entropy, gradLogProbs,
                   gradEntropy, gradHidden, gradWeight, gradBias, err, errlen)
}

@c @implementation
public func grpo_fused_log_probs_backward_bf16(
    _ hidden: UnsafePointer<UInt16>?, _ weight: UnsafePointer<UInt16>?, _ bias: UnsafePointer<UInt16>?,
    _ n: Int, _ hiddenSize: Int, _ vocab: Int, _ targets: UnsafePointer<Int64>?,
    _ cfg: UnsafePointer<grpo_lm_head_config>?, _ logsumexp: UnsafePointer<Double>?,
    _ entropy: UnsafePointer<Float>?, _ gradLogProbs: UnsafePointer<Float>?,
    _ gradEntropy: UnsafePointer<Float>?, _ gradHidden: UnsafeMutablePointer<Float>?,
    _ gradWeight: UnsafeMutablePointer<Float>?, _ gradBias: UnsafeMutablePointer<Float>?,
    _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    fusedBackwardC(asBF16(hidden), asBF16(weight), asBF16(bias), n, hiddenSize, vocab, targets, cfg, logsumexp,
                   entropy, gradLogProbs, gradEntropy, gradHidden, gradWeight, gradBias, err, errlen)
}

@c @implementation
public func grpo_fused_log_probs_scratch_bytes(
    _ n: Int, _ hiddenSize: Int, _ vocab: Int, _ cfg: UnsafePointer<grpo_lm_head_config>?, _ dtype: Int32,
    _ bytes: UnsafeMutablePointer<Int>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        let config = try lmHeadConfig(cfg)
        guard let bytes else { throw GRPOError(.null, "bytes is NULL") }
        let dt = try logitDType(dtype, "dtype")
        guard dt == .f32 || dt == .bf16 else {
            throw GRPOError(.dtype, "the fused LM head takes float32 or bfloat16 inputs, got \(dt.name)")
        }
        bytes.pointee = try FusedLMHead.scratchBytes(rows: n, hidden: hiddenSize, vocab: vocab, config: config,
                                                     bfloat16: dt == .bf16)
    }
}

@c @implementation
public func grpo_benchmark_sgemm_nt_f32(
    _ a: UnsafePointer<Float>?, _ b: UnsafePointer<Float>?, _ m: Int, _ n: Int, _ k: Int,
    _ c: UnsafeMutablePointer<Float>?, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int
) -> grpo_status {
    cCall(err, errlen) { () throws(GRPOError) in
        guard m >= 1, n >= 1, k >= 1 else {
            throw GRPOError(.shape, "sgemm sizes must be >= 1, got m=\(m) n=\(n) k=\(k)")
        }
        let mk = try checkedProduct(m, k, what: "a"), nk = try checkedProduct(n, k, what: "b")
        let mn = try checkedProduct(m, n, what: "c")
        try benchmarkSgemmNT(m: m, n: n, k: k, a: inputView(a, mk, "a"), b: inputView(b, nk, "b"),
                             c: outputView(c, mn, "c"))
    }
}
