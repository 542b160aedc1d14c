import Testing
import CGRPOBridge
@testable import GRPOSwift

/// Issue 10 "sizes": every C entry point refuses element counts whose products overflow Int with
/// GRPO_ERR_OVERFLOW and a message naming the product, before any buffer is read or allocated (the
/// pointers below are tiny: a kernel that went on would read far out of bounds, which ASan reports).
@Suite("Size limits at the C ABI")
struct SizeLimitTests {
    static let huge = Int.max / 2

    func message(_ err: [CChar]) -> String { err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }

    /// A valid dapo configuration (the sizes are what these tests vary).
    static func lossConfig() -> grpo_loss_config {
        var cfg = grpo_loss_config()
        cfg.loss_type = 3; cfg.epsilon = 0.2; cfg.epsilon_high = 0.2; cfg.top_entropy_quantile = 1
        cfg.sapo_temperature_pos = 1; cfg.sapo_temperature_neg = 1.05
        cfg.vespo_k_pos = 2; cfg.vespo_lambda_pos = 3; cfg.vespo_k_neg = 3; cfg.vespo_lambda_neg = 2
        cfg.num_items_in_batch = -1; cfg.num_processes = 1; cfg.gradient_accumulation_steps = 1
        return cfg
    }

    @Test func policyLossBatchTimesLength() {
        var cfg = Self.lossConfig()
        let x = [Float](repeating: 0, count: 8), m = [UInt8](repeating: 1, count: 8)
        var grad = [Float](repeating: 0, count: 8)
        var metrics = grpo_loss_metrics()
        var err = [CChar](repeating: 0, count: 256)
        let st = x.withUnsafeBytes { xb in m.withUnsafeBufferPointer { mb in
            var inp = grpo_loss_inputs()
            inp.batch = Self.huge; inp.length = 4; inp.dtype = 0; inp.aux_dtype = 0
            inp.logps = xb.baseAddress; inp.advantages = xb.baseAddress; inp.advantages_cols = 1
            inp.mask = mb.baseAddress
            return grpo_policy_loss(&inp, &cfg, &grad, nil, &metrics, &err, 256)
        }}
        #expect(st == GRPO_ERR_OVERFLOW)
        #expect(message(err).contains("B*T"))
    }

    @Test func fusedLinearLossProducts() {
        var cfg = Self.lossConfig()
        var head = grpo_lm_head_config(temperature: 1, logit_scale: 1, final_logit_softcapping: 0, tile_rows: 0,
                                       tile_cols: 0)
        let x = [Float](repeating: 0, count: 16), m = [UInt8](repeating: 1, count: 16), ids = [Int64](repeating: 0, count: 16)
        var gh = [Float](repeating: 0, count: 16), gw = gh
        var metrics = grpo_loss_metrics()
        var err = [CChar](repeating: 0, count: 256)
        // (batch, length, hidden, vocab): batch*length, (batch*length)*hidden, vocab*hidden overflow.
        for (b, t, h, v, what) in [(Self.huge, 4, 4, 4, "batch * length"), (1 << 40, 1, 1 << 30, 4, "hidden"),
                                   (1, 4, 1 << 40, 1 << 30, "weight")] {
            let st = x.withUnsafeBytes { xb in m.withUnsafeBufferPointer { mb in ids.withUnsafeBufferPointer { ib in
                var inp = grpo_fused_loss_inputs()
                inp.batch = b; inp.length = t; inp.hidden_size = h; inp.vocab = v; inp.dtype = 0; inp.aux_dtype = 0
                inp.hidden = xb.baseAddress; inp.weight = xb.baseAddress; inp.selected_token_ids = ib.baseAddress
                inp.mask = mb.baseAddress; inp.advantages = xb.baseAddress; inp.advantages_cols = 1
                return grpo_fused_linear_loss(&inp, &cfg, &head, &gh, &gw, nil, nil, nil, &metrics, &err, 256)
            }}}
            #expect(st == GRPO_ERR_OVERFLOW, "\(what): \(message(err))")
            #expect(message(err).contains(what))
        }
        var bytes = 0
        #expect(grpo_fused_linear_loss_scratch_bytes(Self.huge, 4, 896, 151_936, &head, 0, 0, 0, 0, &bytes, &err, 256)
                == GRPO_ERR_OVERFLOW)
        // Every product fits, but rows x per-row scratch does not: still an overflow, not a wrong size.
        #expect(grpo_fused_linear_loss_scratch_bytes(1 << 30, 1 << 30, 1, 1, &head, 0, 0, 0, 0, &bytes, &err, 256)
                == GRPO_ERR_OVERFLOW)
    }

    @Test func estimatorProducts() {
        var cfg = grpo_estimator_config(num_generations: 1, estimator: 5, singleton: 0, scale_rewards: 0,
                                        normalize: 0, gpg_alpha_mode: 0, masked_returns: 1, epsilon: 0,
                                        gamma: 1, gpg_alpha: 1, gpg_f_norm: 1)
        var r: [Float] = [1, 0, 0, 1], mask: [UInt8] = [1, 1, 1, 1], adv = [Float](repeating: 0, count: 4)
        var err = [CChar](repeating: 0, count: 256)
        #expect(grpo_token_advantages_f32(&r, Self.huge, 4, 1, &mask, nil, &cfg, &adv, &err, 256) == GRPO_ERR_OVERFLOW)
        #expect(message(err).contains("response_mask"))
        // A huge reward_cols is refused as a shape (1 or t) before any product is formed.
        #expect(grpo_token_advantages_f32(&r, 4, 1, Self.huge, &mask, nil, &cfg, &adv, &err, 256) == GRPO_ERR_SHAPE)
        #expect(message(err).contains("reward_cols"))
    }
}
