// Garbage (NaN, infinity) in the hidden state of a row without gradient (label < 0, zero
// incoming gradient) must not reach grad_weight through 0 * NaN inside the GEMM.
import Testing
@testable import GRPOSwift

@Suite struct GradWeightGEMMTests {
    func backward(_ hidden: [Float], weight: [Float], n: Int, h: Int, v: Int, targets: [Int64],
                  gl: [Float], tile: (Int, Int)) throws -> (gh: [Float], gw: [Float], gb: [Float]) {
        let cfg = LMHeadConfig(tileRows: tile.0, tileCols: tile.1)
        var lse = [Double](repeating: 0, count: n)
        var lp = [Float](repeating: 0, count: n)
        var gh = [Float](repeating: 0, count: n * h), gw = [Float](repeating: 0, count: v * h)
        var gb = [Float](repeating: 0, count: v)
        let bias = [Float](repeating: 0.1, count: v)
        try hidden.withUnsafeBufferPointer { hb in
            try weight.withUnsafeBufferPointer { wb in
                try bias.withUnsafeBufferPointer { bb in
                    try targets.withUnsafeBufferPointer { tb in
                        try lp.withUnsafeMutableBufferPointer { lb in
                            try lse.withUnsafeMutableBufferPointer { sb in
                                try FusedLMHead.forward(hidden: hb, weight: wb, bias: bb, rows: n, hiddenSize: h,
                                                        vocab: v, targets: tb, config: cfg, logProbs: lb,
                                                        entropy: nil, logSumExp: sb)
                            }
                        }
                        try lse.withUnsafeBufferPointer { sb in
                            try gl.withUnsafeBufferPointer { gb0 in
                                try gh.withUnsafeMutableBufferPointer { ghb in
                                    try gw.withUnsafeMutableBufferPointer { gwb in
                                        try gb.withUnsafeMutableBufferPointer { gbb in
                                            try FusedLMHead.backward(
                                                hidden: hb, weight: wb, bias: bb, rows: n, hiddenSize: h, vocab: v,
                                                targets: tb, config: cfg, logSumExp: sb, entropy: nil,
                                                gradLogProbs: gb0, gradEntropy: nil, gradHidden: ghb,
                                                gradWeight: gwb, gradBias: gbb)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return (gh, gw, gb)
    }

    @Test(arguments: [(2, 3), (16, 16)])
    func nonFiniteHiddenOfRowsWithoutGradientIsIgnored(tile: (Int, Int)) throws {
        var rng = SplitMix(seed: 11)
        let n = 7, h = 10, v = 9
        var hidden = (0..<(n * h)).map { _ in Float(rng.uniform(-1, 1)) }
        let weight = (0..<(v * h)).map { _ in Float(rng.uniform(-0.5, 0.5)) }
        let targets: [Int64] = [1, -100, 3, 4, 0, -100, 8]
        let gl: [Float] = [1, 0.5, -0.5, 0, 0.25, 1, -1]  // row 3: scored but zero gradient
        let clean = try backward(hidden, weight: weight, n: n, h: h, v: v, targets: targets, gl: gl, tile: tile)
        for (r, junk) in [(1, Float.nan), (3, Float.infinity), (5, -Float.infinity)] {
            for j in 0..<h where j % 3 == r % 3 { hidden[r * h + j] = junk }
        }
        let dirty = try backward(hidden, weight: weight, n: n, h: h, v: v, targets: targets, gl: gl, tile: tile)
        #expect(dirty.gw.allSatisfy { $0.isFinite })
        #expect(dirty.gw == clean.gw)  // ==: +0 and -0 compare equal
        #expect(dirty.gh == clean.gh && dirty.gb == clean.gb)
        // A NaN in a row that has a gradient does propagate (it is real data).
        hidden[2 * h] = .nan
        let real = try backward(hidden, weight: weight, n: n, h: h, v: v, targets: targets, gl: gl, tile: tile)
        #expect(real.gw.contains { $0.isNaN })
    }

    @Test func cleanedBlockZeroesOnlySkippedNonFiniteRows() {
        let x: [Float] = [1, 2, .nan, 4, 5, 6]  // 3 rows of H = 2
        x.withUnsafeBufferPointer { xb in
            let p = xb.baseAddress!
            #expect(GradWeightGEMM.cleanedBlock(rows: 3, hidden: p, H: 2) { _ in false } == nil)
            #expect(GradWeightGEMM.cleanedBlock(rows: 3, hidden: p, H: 2) { $0 != 1 } == nil)
            #expect(GradWeightGEMM.cleanedBlock(rows: 3, hidden: p, H: 2) { _ in true } == [1, 2, 0, 0, 5, 6])
            // A cleaned block is read with leading dimension n.
            let cleaned = GradWeightGEMM.cleanedBlock(rows: 3, hidden: p, H: 2) { _ in true }
            let g: [Float] = [1, 0, 2]  // (k = 3) x (m = 1)
            var c: [Float] = [7, 7]
            g.withUnsafeBufferPointer { gb in
                c.withUnsafeMutableBufferPointer { cb in
                    GradWeightGEMM.gemmTN(cleaned: cleaned, m: 1, n: 2, k: 3, g: gb.baseAddress!, ldg: 1,
                                          x: p, ldx: 2, beta: 0, c: cb.baseAddress!, ldc: 2)
                }
            }
            #expect(c == [11, 14])
        }
    }
}
