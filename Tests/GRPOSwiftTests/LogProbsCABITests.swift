import Testing
@testable import GRPOSwift
import CGRPOBridge

func errorText(_ err: [CChar]) -> String {
    err.withUnsafeBufferPointer { b in String(cString: b.baseAddress!) }
}

@Suite struct LogProbsCABITests {
    @Test func forwardBackwardThroughTheABI() {
        var rng = SplitMix(seed: 41)
        let n = 3, v = 10
        let x = randomLogits(n * v, rng: &rng)
        let xf = x.map { Float($0) }
        let t: [Int64] = [1, -100, 9]
        var lp = [Float](repeating: 9, count: n), h = lp
        var lse = [Double](repeating: 9, count: n)
        var err = [CChar](repeating: 0, count: 256)
        #expect(grpo_selective_log_softmax(xf, Int32(GRPO_F32.rawValue), n, v, t, nil, 0.5, &lp, &h, &lse, &err, 256) == GRPO_OK)
        let ref = referenceLogProbs(xf.map { Double($0) }, vocab: v, targets: t, tau: 0.5)
        #expect(maxAbsDiff(lp.map { Double($0) }, ref.lp) < 1e-5)
        // f64 through the ABI: float64 outputs.
        var lp64 = [Double](repeating: 9, count: n), h64 = lp64
        #expect(grpo_selective_log_softmax(x, Int32(GRPO_F64.rawValue), n, v, t, nil, 0.5, &lp64, &h64, nil, &err, 256) == GRPO_OK)
        let ref64 = referenceLogProbs(x, vocab: v, targets: t, tau: 0.5)
        #expect(maxAbsDiff(lp64, ref64.lp) < 1e-12 && maxAbsDiff(h64, ref64.h) < 1e-12)
        // Backward out of place vs in place.
        let gl: [Float] = [1, 1, -0.5], gh: [Float] = [0.2, 0.3, 0.1]
        var g = [Float](repeating: 0, count: n * v)
        #expect(grpo_selective_log_softmax_backward(xf, Int32(GRPO_F32.rawValue), n, v, t, nil, 0.5, lse, h, gl, gh,
                                                   &g, Int32(GRPO_F32.rawValue), &err, 256) == GRPO_OK)
        var inPlace = xf
        let st = inPlace.withUnsafeMutableBytes { buf in
            grpo_selective_log_softmax_backward(buf.baseAddress, Int32(GRPO_F32.rawValue), n, v, t, nil, 0.5, lse, h, gl, gh,
                                                buf.baseAddress, Int32(GRPO_F32.rawValue), nil, 0)
        }
        #expect(st == GRPO_OK && inPlace == g)
        let fd = finiteDifferenceGradient(xf.map { Double($0) }, vocab: v, targets: t, tau: 0.5,
                                          gl: gl.map { Double($0) }, gh: gh.map { Double($0) })
        #expect(maxAbsDiff(g.map { Double($0) }, fd) < 1e-5)
    }

    @Test func errorsAreReportedNotTrapped() {
        var err = [CChar](repeating: 0, count: 256)
        let x: [Float] = [0, 1, 2, 3]
        var lp = [Float](repeating: 0, count: 2)
        // Overflowing n * vocab is caught before any allocation or access.
        #expect(grpo_selective_log_softmax(x, 0, Int.max / 2, 4, [0], nil, 1, &lp, nil, nil, &err, 256) == GRPO_ERR_OVERFLOW)
        #expect(grpo_selective_log_softmax(x, 7, 2, 2, [0, 1], nil, 1, &lp, nil, nil, &err, 256) == GRPO_ERR_DTYPE)
        #expect(grpo_selective_log_softmax(x, 0, 2, 2, [0, 2], nil, 1, &lp, nil, nil, &err, 256) == GRPO_ERR_VALUE)
        #expect(errorText(err).contains("targets[1] = 2"))
        #expect(grpo_selective_log_softmax(x, 0, 2, 2, [0, 1], nil, -1, &lp, nil, nil, &err, 256) == GRPO_ERR_VALUE)
        #expect(grpo_selective_log_softmax(nil, 0, 2, 2, [0, 1], nil, 1, &lp, nil, nil, &err, 256) == GRPO_ERR_NULL)
        #expect(grpo_selective_log_softmax(x, 0, -1, 2, [0, 1], nil, 1, &lp, nil, nil, &err, 256) == GRPO_ERR_SHAPE)
        // Partial overlap of grad_logits with logits.
        var buf: [Float] = [0, 1, 2, 3, 4, 5]
        let st = buf.withUnsafeMutableBufferPointer { b in
            grpo_selective_log_softmax_backward(b.baseAddress, 0, 2, 2, [0, 1], nil, 1, nil, nil, [1, 1], nil,
                                                b.baseAddress! + 1, 0, nil, 0)
        }
        #expect(st == GRPO_ERR_VALUE)
        // grad dtype must be f32 or the logits' dtype.
        var g = [Float](repeating: 0, count: 4)
        #expect(grpo_selective_log_softmax_backward(x, 0, 2, 2, [0, 1], nil, 1, nil, nil, [1, 1], nil, &g, 2,
                                                   &err, 256) == GRPO_ERR_DTYPE)
        // Fused head: overflowing n * hidden_size, bad softcap, NULL config.
        var cfg = grpo_lm_head_config(temperature: 1, logit_scale: 1, final_logit_softcapping: 0, tile_rows: 0, tile_cols: 0)
        #expect(grpo_fused_log_probs_f32(x, x, nil, Int.max / 2, 4, 1, [0], &cfg, &lp, nil, nil, &err, 256) == GRPO_ERR_OVERFLOW)
        cfg.final_logit_softcapping = -3
        #expect(grpo_fused_log_probs_f32(x, x, nil, 1, 2, 2, [0], &cfg, &lp, nil, nil, &err, 256) == GRPO_ERR_VALUE)
        #expect(grpo_fused_log_probs_f32(x, x, nil, 1, 2, 2, [0], nil, &lp, nil, nil, &err, 256) == GRPO_ERR_NULL)
        cfg.final_logit_softcapping = 0
        var bytes = 0
        #expect(grpo_fused_log_probs_scratch_bytes(1 << 40, 4096, 1 << 20, &cfg, 0, &bytes, &err, 256) == GRPO_OK)
        let base = FusedLMHead.defaultTileRows * FusedLMHead.defaultTileCols + 4 * FusedLMHead.defaultTileRows
        #expect(bytes == base * 4)
        #expect(grpo_fused_log_probs_scratch_bytes(1 << 40, 4096, 1 << 20, &cfg, 2, &bytes, &err, 256) == GRPO_OK)
        #expect(bytes == (base + (FusedLMHead.defaultTileRows + FusedLMHead.defaultTileCols) * 4096
                          + FusedLMHead.defaultTileCols) * 4)
        #expect(grpo_fused_log_probs_scratch_bytes(10, 10, 10, &cfg, 1, &bytes, &err, 256) == GRPO_ERR_DTYPE)
        var gw = [Float](repeating: 0, count: 4)
        #expect(grpo_fused_log_probs_backward_f32(x, x, nil, 1, 2, 2, [0], &cfg, [0], nil, [1], nil, nil, &gw, &g,
                                                  &err, 256) == GRPO_ERR_NULL)  // grad_bias without bias
    }
}
