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
// Schedules. Every loss type's g_i depends on the rest of the batch only through normalisers
// fixed by the mask (B, L_i, sum m, num_items_in_batch) and, for sequence-level options (GSPO,
// vespo, the off-policy mask), on the sequence's own rows. So:
//   3-GEMM schedule (FusedLinearLoss+Resident.swift; float32 inputs, top_entropy_quantile == 1,
//   one sequence's logits within the scratch budget): per block of whole sequences, sgemm the
//   block's logits into scratch, fold each row (lp, H, lse), run the loss kernel on the block
//   (g rescaled to the batch's normalisers), overwrite the resident logits with d loss / d logits,
//   then grad_hidden and grad_weight by sgemm: 3 GEMM passes, no recompute.
//   4-GEMM schedule (otherwise): pass 1 over all rows (FusedLMHead.forward: logits tile by sgemm,
//   online log-sum-exp/entropy), the loss kernel on the whole batch, pass 2 (FusedLMHead.backward:
//   tile recomputed, turned into d loss / d logits, two gradient sgemms).
// Loss and metrics are always computed once on the whole batch's (lp, H) (O(N) work). Reference
// log-probs from (ref_hidden, ref_weight) take one more forward GEMM pass, under no grad.
//
// Memory: 3-GEMM: one block's resident scratch (logits, per-chunk statistics, partial grad_hidden
// blocks), at most `scratchBudget` bytes (default min(256 MiB, half of the N x V logits): never an
// N x V buffer; the batch is cut into the fewest balanced blocks of whole sequences that fit);
// 4-GEMM: the fused head's tile (FusedLMHead.scratchBytes,
// 16 MiB with the defaults). Plus O(N) per-row vectors: lp, H, g, gH (float) and lse (double) =
// 24 N bytes (+4 N for computed ref log-probs). Never O(N V) beyond the budget; `scratchBytes`
// gives the exact figure.
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
    /// Bytes the call allocates besides its outputs (an upper bound): the larger of the fused
    /// head's tile scratch (4-GEMM schedule; pass 1 and pass 2 map it in turn) and one block's
    /// resident scratch (3-GEMM schedule, when it applies for this batch x length: its logits,
    /// per-chunk statistics and partial grad_hidden blocks, within the budget), plus 24 bytes per
    /// row (+4 with ref_hidden).
    public static func scratchBytes(batch: Int, length: Int, hiddenSize: Int, vocab: Int, head: LMHeadConfig,
                                    bfloat16: Bool, refFromHidden: Bool, lossConfig: LossConfig = LossConfig(),
                                    scratchBudget: Int? = nil) throws(GRPOError) -> Int {
        let rows = try checkedProduct(batch, length, what: "batch * length")
        let scratchBudget = resolvedBudget(scratchBudget, rows: rows, vocab: vocab)
        var tile = try FusedLMHead.scratchBytes(rows: rows, hidden: hiddenSize, vocab: vocab, config: head,
                                                bfloat16: bfloat16)
        if let rp = residentPlan(batch: batch, length: length, hiddenSize: hiddenSize, vocab: vocab,
                                 budget: scratchBudget, config: lossConfig, isFloat: !bfloat16) {
            // residentPlan checked floatsPerRow * 4 * length <= budget, and maxRows <= budget / (4 floatsPerRow).
            tile = Swift.max(tile, rp.scratchFloats * MemoryLayout<Float>.stride)
        }
        let perRow = 24 + (refFromHidden ? 4 : 0)
        let rowsBytes = try checkedProduct(rows, perRow, what: "per-row scratch")
        let (s, o) = tile.addingReportingOverflow(rowsBytes)
        guard !o else { throw GRPOError(.overflow, "scratch size overflows") }
        return s
    }

    /// Loss, metrics and gradients. gradHidden (rows x hiddenSize), gradWeight (vocab x
    /// hiddenSize), gradBias (vocab; requires bias) are each optional and OVERWRITTEN (float32).
    /// logProbs / entropy (rows), optional, receive the per-token values of pass 1.
    public static func compute<E: LogitElement>(
        _ x: FusedLinearLossInputs<E>, loss: LossConfig, head: LMHeadConfig = LMHeadConfig(),
        gradHidden: UnsafeMutableBufferPointer<Float>?, gradWeight: UnsafeMutableBufferPointer<Float>?,
        gradBias: UnsafeMutableBufferPointer<Float>?,
        logProbs: UnsafeMutableBufferPointer<Float>? = nil, entropy: UnsafeMutableBufferPointer<Float>? = nil,
        scratchBudget: Int? = nil
    ) throws(GRPOError) -> PolicyLossMetrics {
        if let b = scratchBudget, b < 0 { throw GRPOError(.value, "scratch_budget must be >= 0, got \(b)") }
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

        if refFromHidden, let rh = x.refHidden, let rw = x.refWeight {
            try refComputed.withUnsafeMutableBufferPointer { (rB) throws(GRPOError) in
                try FusedLMHead.forward(hidden: rh, weight: rw, bias: x.refBias, rows: n,
                                        hiddenSize: x.hiddenSize, vocab: x.vocab, targets: x.targets,
                                        config: head, logProbs: rB, entropy: nil, logSumExp: nil)
            }
        }

        // The 3-GEMM schedule (FusedLinearLoss+Resident.swift) when it applies.
        if wantGrad, E.self == Float.self,
           let rp = residentPlan(batch: x.batch, length: x.length, hiddenSize: x.hiddenSize, vocab: x.vocab,
                                 budget: resolvedBudget(scratchBudget, rows: n, vocab: x.vocab),
                                 config: loss, isFloat: true) {
            let p = try FusedLMHead.plan(rows: n, hidden: x.hiddenSize, vocab: x.vocab, config: head)
            try FusedLMHead.validateCommon(p, hidden: x.hidden.count, weight: x.weight.count, bias: x.bias?.count,
                                           targets: x.targets)
            func f32(_ b: UnsafeBufferPointer<E>?) -> UnsafeBufferPointer<Float>? {
                guard let b else { return nil }
                return UnsafeBufferPointer(start: b.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: Float.self) },
                                           count: b.count)
            }
            guard let hF = f32(x.hidden), let wF = f32(x.weight) else { throw GRPOError(.internal, "float view") }
            let xf = FusedLinearLossInputs<Float>(
                batch: x.batch, length: x.length, hiddenSize: x.hiddenSize, vocab: x.vocab, hidden: hF, weight: wF,
                bias: f32(x.bias), targets: x.targets, mask: x.mask, advantages: x.advantages, oldLogps: x.oldLogps,
                refLogps: x.refLogps, samplingLogps: x.samplingLogps,
                importanceSamplingRatio: x.importanceSamplingRatio)
            try lp.withUnsafeMutableBufferPointer { (lpB) throws(GRPOError) in
                try ent.withUnsafeMutableBufferPointer { (entB) throws(GRPOError) in
                    try lse.withUnsafeMutableBufferPointer { (lseB) throws(GRPOError) in
                        try g.withUnsafeMutableBufferPointer { (gB) throws(GRPOError) in
                            try gH.withUnsafeMutableBufferPointer { (gHB) throws(GRPOError) in
                                try refComputed.withUnsafeBufferPointer { (rcB) throws(GRPOError) in
                                    try computeResident(xf, loss: loss, plan: p, resident: rp,
                                                        ref: refFromHidden ? rcB : x.refLogps, lp: lpB, ent: entB,
                                                        lse: lseB, g: gB, gH: gHB, gradHidden: gradHidden,
                                                        gradWeight: gradWeight, gradBias: gradBias)
                                }
                            }
                        }
                    }
                }
            }
            // Loss and metrics of the whole batch (O(N)), exactly as the 4-GEMM schedule.
            let metrics: PolicyLossMetrics = try lp.withUnsafeBufferPointer { (lpB) throws(GRPOError) in
                try ent.withUnsafeBufferPointer { (entB) throws(GRPOError) in
                    try refComputed.withUnsafeBufferPointer { (rcB) throws(GRPOError) in
                        try PolicyLoss.compute(
                            PolicyLossInputs<Float>(
                                batch: x.batch, length: x.length, logps: lpB, oldLogps: x.oldLogps,
                                refLogps: refFromHidden ? rcB : x.refLogps, samplingLogps: x.samplingLogps,
                                entropies: entB, advantages: x.advantages, mask: x.mask,
                                importanceSamplingRatio: x.importanceSamplingRatio),
                            config: loss, grad: nil, gradEntropies: nil)
                    }
                }
            }
            copyOut(lp, ent, logProbs, entropy)
            return metrics
        }

        // The 4-GEMM schedule. Pass 1: log-probs, entropies, log-sum-exps (one logits GEMM per tile).
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
        copyOut(lp, ent, logProbs, entropy)
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

    static func copyOut(_ lp: [Float], _ ent: [Float], _ logProbs: UnsafeMutableBufferPointer<Float>?,
                        _ entropy: UnsafeMutableBufferPointer<Float>?) {
        if let logProbs, let d = logProbs.baseAddress {
            lp.withUnsafeBufferPointer { s in if let sb = s.baseAddress { d.update(from: sb, count: s.count) } }
        }
        if let entropy, let d = entropy.baseAddress {
            ent.withUnsafeBufferPointer { s in if let sb = s.baseAddress { d.update(from: sb, count: s.count) } }
        }
    }
}
