// Array convenience API of the fused linear GRPO loss (float32 inputs), for Swift callers.

/// Loss, metrics and gradients of one fused linear loss call.
public struct FusedLinearLossResult {
    public var loss: Double { metrics.loss }
    public var metrics: PolicyLossMetrics
    /// (rows x hiddenSize), (vocab x hiddenSize), (vocab) or nil (no bias).
    public var gradHidden: [Float]
    public var gradWeight: [Float]
    public var gradBias: [Float]?
    /// Per-token log-probs and entropies of the policy (rows).
    public var logProbs: [Float]
    public var entropy: [Float]
}

extension FusedLinearLoss {
    /// `hidden` (batch*length x hiddenSize), `weight` (vocab x hiddenSize), `bias` (vocab) or nil,
    /// `targets` and `mask` (batch*length), `advantages` (batch) or (batch*length), old/ref log-probs
    /// (batch*length) or nil. See `compute(_:loss:head:...)`.
    public static func compute(
        batch: Int, length: Int, hiddenSize: Int, vocab: Int, hidden: [Float], weight: [Float], bias: [Float]? = nil,
        targets: [Int64], mask: [UInt8], advantages: [Float], oldLogps: [Float]? = nil, refLogps: [Float]? = nil,
        config: LossConfig, head: LMHeadConfig = LMHeadConfig(), scratchBudget: Int? = nil
    ) throws(GRPOError) -> FusedLinearLossResult {
        let n = try checkedProduct(batch, length, what: "batch * length")
        var gh = [Float](repeating: 0, count: try checkedProduct(n, hiddenSize, what: "grad_hidden"))
        var gw = [Float](repeating: 0, count: try checkedProduct(vocab, hiddenSize, what: "grad_weight"))
        var gb = [Float](repeating: 0, count: bias == nil ? 0 : vocab)
        var lp = [Float](repeating: 0, count: n), ent = lp
        let outcome: Result<PolicyLossMetrics, GRPOError> =
            hidden.withUnsafeBufferPointer { h in
            weight.withUnsafeBufferPointer { w in
            withOptionalBuffer(bias) { b in
            targets.withUnsafeBufferPointer { t in
            mask.withUnsafeBufferPointer { m in
            advantages.withUnsafeBufferPointer { a in
            withOptionalBuffer(oldLogps) { old in
            withOptionalBuffer(refLogps) { ref in
            gh.withUnsafeMutableBufferPointer { ghB in
            gw.withUnsafeMutableBufferPointer { gwB in
            gb.withUnsafeMutableBufferPointer { gbB in
            lp.withUnsafeMutableBufferPointer { lpB in
            ent.withUnsafeMutableBufferPointer { entB in
                let x = FusedLinearLossInputs<Float>(
                    batch: batch, length: length, hiddenSize: hiddenSize, vocab: vocab, hidden: h, weight: w,
                    bias: b, targets: t, mask: m, advantages: .f32(a), oldLogps: old, refLogps: ref)
                return Result { () throws(GRPOError) in
                    try compute(x, loss: config, head: head, gradHidden: ghB, gradWeight: gwB,
                                gradBias: b == nil ? nil : gbB, logProbs: lpB, entropy: entB,
                                scratchBudget: scratchBudget)
                }
            }}}}}}}}}}}}}
        let metrics = try outcome.get()
        return FusedLinearLossResult(metrics: metrics, gradHidden: gh, gradWeight: gw,
                                     gradBias: bias == nil ? nil : gb, logProbs: lp, entropy: ent)
    }
}
