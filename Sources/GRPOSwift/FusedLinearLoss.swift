// The fused linear GRPO loss (issue 7): from the last hidden states and the LM-head weight
// straight to TRL 1.16's GRPO loss, its metrics and the gradients w.r.t. hidden, weight and
// bias, with the gradients computed during the call (no N x V logits are ever stored).
//
// Maths. With lp_i, H_i the log-prob of target_i and the entropy of row i under
// logits = (hidden W^T + bias) * logit_scale (softcapped) / temperature (FusedLMHead.swift),
// loss = PolicyLoss(lp, H, advantages, mask, old, ref, ...) exactly as grpo_policy_loss, and
//   d loss / d logits_iv = g_i (1[v = t_i] - p_iv) - gH_i p_iv (log p_iv + H_i)   (chain rule
//   through scale, softcap and temperature as in FusedLMHead.backward), where
//   g_i = d loss / d lp_i and gH_i = d loss / d H_i come from the loss kernel in closed form.
//   grad_hidden = G W, grad_weight = G^T hidden, grad_bias = column sums of G.
//
// Passes. The loss of every variant is global over the micro-batch (GRPO's per-sequence
// means, GSPO's sequence ratios, vespo's per-sequence weights, the token normalisers, the
// top-entropy quantile), so the per-token g_i is known only once every row's lp_i is:
//   pass 1: for each tile_rows x tile_cols tile, one sgemm for the logits and an online
//           log-sum-exp/entropy fold (FusedLMHead.forward): lp, H, lse per row;
//   loss:   PolicyLoss.compute on the (B,T) lp/H: loss, metrics, g, gH (O(N) work);
//   pass 2: recompute each tile (sgemm), overwrite it with d loss / d logits, then
//           grad_hidden += G W and grad_weight += G^T hidden (two sgemms) (FusedLMHead.backward).
// That is 4 GEMMs of the N x V x H shape in total, the same count as the composed path
// (fused log-prob forward + backward), but in one call: no Python/autograd round trip, no
// (B,T) tensors re-materialised between the stages, ref log-probs from (ref_hidden,
// ref_weight) computed inside under no grad (one more forward GEMM when given).
// A 3-GEMM schedule would keep each logits tile between pass 1 and pass 2; since g_i depends
// on the whole batch (see above) that needs the whole N x V logits, which the memory budget
// forbids. NOT done here: see the header's notes.
//
// Memory: the fused head's scratch (FusedLMHead.scratchBytes: one tile_rows x tile_cols tile
// plus per-row statistics; 16 MiB with the defaults) plus O(N) per-row vectors:
// lp, H, g, gH (float) and lse (double) = 24 N bytes, plus 4 N for ref log-probs computed from
// ref_hidden. Never O(N V). `scratchBytes` gives the exact figure.
//
// Determinism: every stage is bitwise identical for any thread count (FusedLMHead's fixed
// sub-GEMMs, PolicyLoss's chunk-ordered sums).

/// Inputs of one fused linear GRPO loss call. `E` is the element type of hidden, weight and
/// bias (Float or BFloat16; arithmetic in Float). Row-major; rows = batch * length.
public struct FusedLinearLossInputs<E: LogitElement> {
    public var batch: Int
    public var length: Int
    public var hiddenSize: Int
    public var vocab: Int
    /// (batch * length, hiddenSize).
    public var hidden: UnsafeBufferPointer<E>
    /// (vocab, hiddenSize).
    public var weight: UnsafeBufferPointer<E>
    /// (vocab) or nil.
    public var bias: UnsafeBufferPointer<E>?
    /// (batch * length) token ids in [0, vocab); a negative id is allowed only at masked positions.
    public var targets: UnsafeBufferPointer<Int64>
    /// (batch * length) 0/1.
    public var mask: UnsafeBufferPointer<UInt8>
    /// (batch) or (batch * length).
    public var advantages: AuxValues
    /// (batch * length) float32 or nil (on-policy).
    public var oldLogps: UnsafeBufferPointer<Float>?
    /// (batch * length) float32 or nil.
    public var refLogps: UnsafeBufferPointer<Float>?
    /// The reference policy's hidden states / weight / bias (same shapes and element type), used
    /// when refLogps is nil: the reference log-probs are computed under no grad.
    public var refHidden: UnsafeBufferPointer<E>?
    public var refWeight: UnsafeBufferPointer<E>?
    public var refBias: UnsafeBufferPointer<E>?
    /// (batch * length) float32 sampler log-probs for the off-policy mask, or nil.
    public var samplingLogps: UnsafeBufferPointer<Float>?
    /// (batch) or (batch * length) vLLM importance-sampling ratio, or nil.
    public var importanceSamplingRatio: AuxValues?

    public init(batch: Int, length: Int, hiddenSize: Int, vocab: Int,
                hidden: UnsafeBufferPointer<E>, weight: UnsafeBufferPointer<E>, bias: UnsafeBufferPointer<E>? = nil,
                targets: UnsafeBufferPointer<Int64>, mask: UnsafeBufferPointer<UInt8>, advantages: AuxValues,
                oldLogps: UnsafeBufferPointer<Float>? = nil, refLogps: UnsafeBufferPointer<Float>? = nil,
                refHidden: UnsafeBufferPointer<E>? = nil, refWeight: UnsafeBufferPointer<E>? = nil,
                refBias: UnsafeBufferPointer<E>? = nil, samplingLogps: UnsafeBufferPointer<Float>? = nil,
                importanceSamplingRatio: AuxValues? = nil) {
        self.batch = batch; self.length = length; self.hiddenSize = hiddenSize; self.vocab = vocab
        self.hidden = hidden; self.weight = weight; self.bias = bias; self.targets = targets
        self.mask = mask; self.advantages = advantages; self.oldLogps = oldLogps; self.refLogps = refLogps
        self.refHidden = refHidden; self.refWeight = refWeight; self.refBias = refBias
        self.samplingLogps = samplingLogps; self.importanceSamplingRatio = importanceSamplingRatio
    }
}

public enum FusedLinearLoss {
    /// Bytes the call allocates besides its outputs: the fused head's tile scratch (pass 1 and
    /// pass 2 map it in turn, never both at once) plus 24 bytes per row (+4 with ref_hidden).
    public static func scratchBytes(rows: Int, hiddenSize: Int, vocab: Int, head: LMHeadConfig,
                                    bfloat16: Bool, refFromHidden: Bool) throws(GRPOError) -> Int {
        let tile = try FusedLMHead.scratchBytes(rows: rows, hidden: hiddenSize, vocab: vocab, config: head,
                                                bfloat16: bfloat16)
        let perRow = 24 + (refFromHidden ? 4 : 0)
        let rowsBytes = try checkedProduct(rows, perRow, what: "per-row scratch")
        let (s, o) = tile.addingReportingOverflow(rowsBytes)
        guard !o else { throw GRPOError(.shape, "scratch size overflows") }
        return s
    }

    /// Loss, metrics and gradients. gradHidden (rows x hiddenSize), gradWeight (vocab x
    /// hiddenSize), gradBias (vocab; requires bias) are each optional and OVERWRITTEN (float32).
    /// logProbs / entropy (rows), optional, receive the per-token values of pass 1.
    public static func compute<E: LogitElement>(
        _ x: FusedLinearLossInputs<E>, loss: LossConfig, head: LMHeadConfig = LMHeadConfig(),
        gradHidden: UnsafeMutableBufferPointer<Float>?, gradWeight: UnsafeMutableBufferPointer<Float>?,
        gradBias: UnsafeMutableBufferPointer<Float>?,
        logProbs: UnsafeMutableBufferPointer<Float>? = nil, entropy: UnsafeMutableBufferPointer<Float>? = nil
    ) throws(GRPOError) -> PolicyLossMetrics {
        try loss.validate()
        guard x.batch >= 1, x.length >= 0 else {
            throw GRPOError(.shape, "batch must be >= 1 and length >= 0, got batch=\(x.batch), length=\(x.length)")
        }
        let n = try checkedProduct(x.batch, x.length, what: "batch * length")
        guard x.targets.count == n else {
            throw GRPOError(.shape, "selected_token_ids holds \(x.targets.count) elements, expected \(n)")
        }
        guard x.mask.count == n else { throw GRPOError(.shape, "mask holds \(x.mask.count) elements, expected \(n)") }
        for (name, b) in [("old_logps", x.oldLogps), ("ref_logps", x.refLogps), ("sampling_logps", x.samplingLogps)] {
            if let b, b.count != n { throw GRPOError(.shape, "\(name) holds \(b.count) elements, expected \(n)") }
        }
        for (name, c) in [("logprobs", logProbs?.count), ("entropy", entropy?.count)] {
            if let c, c != n { throw GRPOError(.shape, "\(name) output holds \(c) elements, expected \(n)") }
        }
        // Masked positions may carry any id (TRL pads with the pad token; -100 also accepted);
        // valid positions must be scored.
        for i in 0..<n {
            let m = x.mask[i]
            guard m <= 1 else { throw GRPOError(.value, "mask must hold only 0 and 1, got \(m) at index \(i)") }
            if m == 1 && x.targets[i] < 0 {
                throw GRPOError(.value, "selected_token_ids[\(i)] = \(x.targets[i]) is negative at a valid (mask 1) position")
            }
        }
        let refFromHidden = x.refLogps == nil && x.refHidden != nil
        if x.refLogps == nil && (x.refHidden != nil) != (x.refWeight != nil) {
            throw GRPOError(.null, "ref_hidden and ref_weight must be given together")
        }
        if loss.beta != 0 && x.refLogps == nil && !refFromHidden {
            throw GRPOError(.null, "beta != 0 needs ref_logps or (ref_hidden, ref_weight)")
        }
        if gradBias != nil && x.bias == nil { throw GRPOError(.null, "grad_bias was requested but bias is NULL") }

        // O(N) per-row vectors (24 N bytes, +4 N for computed ref log-probs).
        var lp = [Float](repeating: 0, count: n)
        var ent = [Float](repeating: 0, count: n)
        var lse = [Double](repeating: 0, count: n)
        var g = [Float](repeating: 0, count: n)
        var gH = [Float](repeating: 0, count: loss.entropyCoef != 0 ? n : 0)
        var refComputed = [Float](repeating: 0, count: refFromHidden ? n : 0)
        let wantGrad = gradHidden != nil || gradWeight != nil || gradBias != nil

        // Pass 1: log-probs, entropies, log-sum-exps (one logits GEMM per tile).
        try lp.withUnsafeMutableBufferPointer { (lpB) throws(GRPOError) in
            try ent.withUnsafeMutableBufferPointer { (entB) throws(GRPOError) in
                try lse.withUnsafeMutableBufferPointer { (lseB) throws(GRPOError) in
                    try FusedLMHead.forward(hidden: x.hidden, weight: x.weight, bias: x.bias, rows: n,
                                            hiddenSize: x.hiddenSize, vocab: x.vocab, targets: x.targets,
                                            config: head, logProbs: lpB, entropy: entB,
                                            logSumExp: wantGrad ? lseB : nil)
                }
            }
        }
        if refFromHidden, let rh = x.refHidden, let rw = x.refWeight {
            try refComputed.withUnsafeMutableBufferPointer { (rB) throws(GRPOError) in
                try FusedLMHead.forward(hidden: rh, weight: rw, bias: x.refBias, rows: n,
                                        hiddenSize: x.hiddenSize, vocab: x.vocab, targets: x.targets,
                                        config: head, logProbs: rB, entropy: nil, logSumExp: nil)
            }
        }

        // The loss kernel: loss, metrics, g = d loss / d lp, gH = d loss / d H.
        let metrics: PolicyLossMetrics = try lp.withUnsafeBufferPointer { (lpB) throws(GRPOError) in
            try ent.withUnsafeBufferPointer { (entB) throws(GRPOError) in
                try refComputed.withUnsafeBufferPointer { (rcB) throws(GRPOError) in
                    try g.withUnsafeMutableBufferPointer { (gB) throws(GRPOError) in
                        try gH.withUnsafeMutableBufferPointer { (gHB) throws(GRPOError) in
                            let inputs = PolicyLossInputs<Float>(
                                batch: x.batch, length: x.length, logps: lpB, oldLogps: x.oldLogps,
                                refLogps: refFromHidden ? rcB : x.refLogps, samplingLogps: x.samplingLogps,
                                entropies: entB, advantages: x.advantages, mask: x.mask,
                                importanceSamplingRatio: x.importanceSamplingRatio)
                            return try PolicyLoss.compute(inputs, config: loss, grad: wantGrad ? gB : nil,
                                                          gradEntropies: wantGrad && loss.entropyCoef != 0 ? gHB : nil)
                        }
                    }
                }
            }
        }
        if let logProbs, let d = logProbs.baseAddress {
            lp.withUnsafeBufferPointer { s in if let sb = s.baseAddress { d.update(from: sb, count: n) } }
        }
        if let entropy, let d = entropy.baseAddress {
            ent.withUnsafeBufferPointer { s in if let sb = s.baseAddress { d.update(from: sb, count: n) } }
        }
        guard wantGrad else { return metrics }

        // Pass 2: recompute each tile, turn it into d loss / d logits, two gradient GEMMs.
        try lse.withUnsafeBufferPointer { (lseB) throws(GRPOError) in
            try ent.withUnsafeBufferPointer { (entB) throws(GRPOError) in
                try g.withUnsafeBufferPointer { (gB) throws(GRPOError) in
                    try gH.withUnsafeBufferPointer { (gHB) throws(GRPOError) in
                        try FusedLMHead.backward(hidden: x.hidden, weight: x.weight, bias: x.bias, rows: n,
                                                 hiddenSize: x.hiddenSize, vocab: x.vocab, targets: x.targets,
                                                 config: head, logSumExp: lseB,
                                                 entropy: loss.entropyCoef != 0 ? entB : nil,
                                                 gradLogProbs: gB, gradEntropy: loss.entropyCoef != 0 ? gHB : nil,
                                                 gradHidden: gradHidden, gradWeight: gradWeight, gradBias: gradBias)
                    }
                }
            }
        }
        return metrics
    }
}
