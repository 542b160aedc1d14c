// grpo-bench: Swift-native timings of the kernels (no Python, no C ABI), at the sizes of the
// Python benchmarks, so `run_all.py` can print the Python-call / Swift-native ratio per kernel.
//
//     swift run -c release --scratch-path .build-bench grpo-bench [--quick]
//
// Output lines `SWIFT <kernel> median_s=<seconds> ...` are parsed by run_all.py; the kernel
// names and sizes must match python/benchmarks/swift_overhead.py.
// Each timing includes what the Swift caller pays: the Array convenience APIs allocate their
// outputs (as the Python calls do); the log-prob kernel writes into preallocated buffers, as
// the Python benchmark passes `out=`.
// The library is built with -cross-module-optimization (Package.swift), so this client
// specialises the generic Swift entry points; the `SWIFT_C` lines time the same kernels through
// the C ABI from Swift, for comparison (a `SWIFT` / `SWIFT_C` ratio far above 1 would mean the
// generic API runs unspecialised again). run_all.py prints both against the Python calls.
import CGRPOBridge
import GRPOSwift
import Glibc

let quick = CommandLine.arguments.contains("--quick")

/// SplitMix64-style generator (benchmark data only).
struct Rng {
    var s: UInt64
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }
    mutating func normal() -> Double {  // Box-Muller
        let u = max(uniform(), 1e-300), v = uniform()
        return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)
    }
}

func seconds(_ d: Duration) -> Double {
    let c = d.components
    return Double(c.seconds) + Double(c.attoseconds) * 1e-18
}

/// Median over `repeats` of the mean of `inner` calls, after one warm-up call.
func medianTime(repeats: Int, inner: Int = 1, _ body: () throws -> Void) rethrows -> Double {
    let clock = ContinuousClock()
    try body()
    var times: [Double] = []
    for _ in 0..<(quick ? min(repeats, 2) : repeats) {
        let t0 = clock.now
        for _ in 0..<inner { try body() }
        times.append(seconds(clock.now - t0) / Double(inner))
    }
    times.sort()
    let n = times.count
    return n % 2 == 1 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2
}

func report(_ name: String, _ t: Double, _ note: String) {
    print("SWIFT \(name) median_s=\(t)  (\(t * 1e3) ms)  \(note)")
}

print("grpo-bench: Swift-native kernels, threads=\(Parallel.numThreads)\(quick ? ", quick sizes" : "")")
var rng = Rng(s: 42)

do {
    // 1. Group advantages, N = 1M (2^20) float64 rewards with 1% NaN, G = 16 (bench_advantages.py).
    let n = quick ? 1 << 16 : 1 << 20
    var rewards = [Double](repeating: 0, count: n)
    for i in 0..<n { rewards[i] = rng.uniform() < 0.01 ? .nan : rng.normal() }
    let config = AdvantagesConfig(numGenerations: 16)
    var sink = 0.0
    let t = try medianTime(repeats: 7) {
        let r = try Advantages.compute(rewards: rewards, config: config)
        sink += r.advantages[0]
    }
    report("advantages_N\(n)_G16", t, "Advantages.compute (Array API, allocates outputs)")
    var cfg = grpo_advantages_config(num_generations: 16, scale_rewards: 0, aggregation: 0)
    var err = [CChar](repeating: 0, count: 256)
    let tC = medianTime(repeats: 7) {
        var a = [Double](repeating: 0, count: n), m = a, s = a
        var z = [UInt8](repeating: 0, count: n)
        let st = grpo_group_advantages_f64(rewards, n, 1, nil, &cfg, &a, &m, &s, &z, &err, 256)
        sink += a[0] + Double(st.rawValue)
    }
    print("SWIFT_C advantages_N\(n)_G16 median_s=\(tC)  (\(tC * 1e3) ms)  grpo_group_advantages_f64 via the C ABI")

    // 2. Policy loss + gradient, B=64 x T=1024 float32, dapo, beta=0.04, old + ref logps,
    //    uneven lengths (bench_loss.py).
    let (b, tl) = quick ? (8, 64) : (64, 1024)
    var lp = [Float](repeating: 0, count: b * tl), old = lp, ref = lp
    var adv = [Float](repeating: 0, count: b)
    var mask = [UInt8](repeating: 0, count: b * tl)
    for i in 0..<(b * tl) {
        lp[i] = -Float(0.05 + 2.95 * rng.uniform())
        old[i] = lp[i] - Float(-0.3 + 0.6 * rng.uniform())
        ref[i] = lp[i] + Float(-0.5 + 1.0 * rng.uniform())
    }
    for i in 0..<b {
        adv[i] = Float(rng.normal())
        let len = Int(Double(tl) * (0.5 + 0.5 * rng.uniform()))
        for j in 0..<len { mask[i * tl + j] = 1 }
    }
    var lossConfig = LossConfig(lossType: .dapo)
    lossConfig.beta = 0.04
    let tLoss = try medianTime(repeats: 15, inner: 5) {
        let r = try PolicyLoss.compute(batch: b, length: tl, logps: lp, advantages: adv, mask: mask,
                                       oldLogps: old, refLogps: ref, config: lossConfig)
        sink += r.metrics.loss
    }
    report("loss_dapo_B\(b)_T\(tl)", tLoss, "PolicyLoss.compute (Array API, loss + grad + metrics)")

    // 3. Log-probs + entropy from logits, forward + backward, N=2048 x V=32768 float32
    //    (bench_logprobs.py section 1).
    let (rows, vocab) = quick ? (256, 8192) : (2048, 32768)
    var logits = [Float](repeating: 0, count: rows * vocab)
    for i in 0..<logits.count { logits[i] = Float(3 * rng.normal()) }
    var targets = [Int64](repeating: 0, count: rows)
    var gl = [Float](repeating: 0, count: rows), gh = gl
    for i in 0..<rows {
        targets[i] = Int64(rng.next() % UInt64(vocab))
        gl[i] = Float(rng.normal())
        gh[i] = Float(rng.normal())
    }
    var outLp = [Float](repeating: 0, count: rows), outH = outLp
    var outLse = [Double](repeating: 0, count: rows)
    var grad = [Float](repeating: 0, count: rows * vocab)
    let tLp = try logits.withUnsafeBufferPointer { x in
        try targets.withUnsafeBufferPointer { tg in
            try gl.withUnsafeBufferPointer { gl in
                try gh.withUnsafeBufferPointer { gh in
                    try outLp.withUnsafeMutableBufferPointer { lpOut in
                        try outH.withUnsafeMutableBufferPointer { hOut in
                            try outLse.withUnsafeMutableBufferPointer { lseOut in
                                try grad.withUnsafeMutableBufferPointer { g in
                                    try medianTime(repeats: 7) {
                                        try LogProbs.forward(logits: x, rows: rows, vocab: vocab, targets: tg,
                                                             logProbs: lpOut, entropy: hOut, logSumExp: lseOut)
                                        try LogProbs.backward(
                                            logits: x, rows: rows, vocab: vocab, targets: tg,
                                            logSumExp: UnsafeBufferPointer(lseOut),
                                            entropy: UnsafeBufferPointer(hOut),
                                            gradLogProbs: gl, gradEntropy: gh, gradLogits: g)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    var errL = [CChar](repeating: 0, count: 256)
    let f32 = Int32(GRPO_F32.rawValue)
    let tLpC = medianTime(repeats: 7) {
        let s1 = grpo_selective_log_softmax(logits, f32, rows, vocab, targets, nil, 1, &outLp, &outH, &outLse,
                                            &errL, 256)
        let s2 = grpo_selective_log_softmax_backward(logits, f32, rows, vocab, targets, nil, 1, outLse, outH,
                                                     gl, gh, &grad, f32, &errL, 256)
        sink += Double(s1.rawValue) + Double(s2.rawValue)
    }
    print("SWIFT_C logprobs_fwd_bwd_N\(rows)_V\(vocab) median_s=\(tLpC)  (\(tLpC * 1e3) ms)  via the C ABI")
    report("logprobs_fwd_bwd_N\(rows)_V\(vocab)", tLp, "LogProbs.forward + backward (preallocated outputs)")

    // 4. Per-call overhead: the smallest calls (the same sizes as swift_overhead.py's percall_*),
    //    through the C ABI from Swift, so run_all.py's ratio is the Python boundary's own cost
    //    (validation, buffer acquisition, output allocation, GIL release) per call.
    var err4 = [CChar](repeating: 0, count: 256)
    let r8: [Double] = [0.1, 0.9, 0.4, 0.4, 1.0, 0.0, 0.7, 0.3]
    var a8 = [Double](repeating: 0, count: 8), m8 = a8, s8 = a8
    var z8 = [UInt8](repeating: 0, count: 8)
    var cfg8 = grpo_advantages_config(num_generations: 8, scale_rewards: 0, aggregation: 0)
    let tAdv8 = medianTime(repeats: 21, inner: 2000) {
        let st = grpo_group_advantages_f64(r8, 8, 1, nil, &cfg8, &a8, &m8, &s8, &z8, &err4, 256)
        sink += a8[0] + Double(st.rawValue)
    }
    print("SWIFT_C percall_advantages_N8 median_s=\(tAdv8)  (\(tAdv8 * 1e6) us)  grpo_group_advantages_f64, N=8")
    let tAdv8S = try medianTime(repeats: 21, inner: 2000) {
        sink += try Advantages.compute(rewards: r8, config: AdvantagesConfig(numGenerations: 8)).advantages[0]
    }
    report("percall_advantages_N8", tAdv8S, "Advantages.compute, N=8 (Array API)")

    let lp8: [Float] = [-0.5, -1.0, -0.25, -2.0, -0.1, -0.7, -1.5, -0.3]
    let ref8 = lp8.map { $0 + 0.05 }
    let adv1: [Float] = [0.5]
    let mask8 = [UInt8](repeating: 1, count: 8)
    var grad8 = [Float](repeating: 0, count: 8)
    var lcfg = grpo_loss_config()
    lcfg.loss_type = Int32(GRPO_LOSS_DAPO.rawValue)
    lcfg.beta = 0.04; lcfg.epsilon = 0.2; lcfg.epsilon_high = 0.2; lcfg.top_entropy_quantile = 1
    lcfg.sapo_temperature_pos = 1; lcfg.sapo_temperature_neg = 1.05
    lcfg.vespo_k_pos = 2; lcfg.vespo_lambda_pos = 3; lcfg.vespo_k_neg = 3; lcfg.vespo_lambda_neg = 2
    lcfg.num_items_in_batch = -1; lcfg.num_processes = 1; lcfg.gradient_accumulation_steps = 1
    var metrics = grpo_loss_metrics()
    let tLoss8 = lp8.withUnsafeBufferPointer { lp in
        ref8.withUnsafeBufferPointer { ref in
            adv1.withUnsafeBufferPointer { adv in
                mask8.withUnsafeBufferPointer { m in
                    var inputs = grpo_loss_inputs()
                    inputs.batch = 1; inputs.length = 8
                    inputs.dtype = Int32(GRPO_F32.rawValue); inputs.aux_dtype = Int32(GRPO_F32.rawValue)
                    inputs.logps = UnsafeRawPointer(lp.baseAddress); inputs.ref_logps = UnsafeRawPointer(ref.baseAddress)
                    inputs.advantages = UnsafeRawPointer(adv.baseAddress); inputs.advantages_cols = 1
                    inputs.mask = m.baseAddress
                    return medianTime(repeats: 21, inner: 2000) {
                        let st = grpo_policy_loss(&inputs, &lcfg, &grad8, nil, &metrics, &err4, 256)
                        sink += metrics.loss + Double(st.rawValue)
                    }
                }
            }
        }
    }
    print("SWIFT_C percall_loss_B1_T8 median_s=\(tLoss8)  (\(tLoss8 * 1e6) us)  grpo_policy_loss, dapo + KL, B=1, T=8")
    var lc8 = LossConfig(lossType: .dapo)
    lc8.beta = 0.04
    let tLoss8S = try medianTime(repeats: 21, inner: 2000) {
        sink += try PolicyLoss.compute(batch: 1, length: 8, logps: lp8, advantages: adv1, mask: mask8,
                                       refLogps: ref8, config: lc8).metrics.loss
    }
    report("percall_loss_B1_T8", tLoss8S, "PolicyLoss.compute, B=1, T=8 (Array API)")

    let x16: [Float] = (0..<16).map { Float($0 % 5) * 0.5 - 1 }
    let t1: [Int64] = [3]
    var lp1 = [Float](repeating: 0, count: 1), h1 = lp1
    var lse1 = [Double](repeating: 0, count: 1)
    let tLs = medianTime(repeats: 21, inner: 2000) {
        let st = grpo_selective_log_softmax(x16, f32, 1, 16, t1, nil, 1, &lp1, &h1, &lse1, &err4, 256)
        sink += Double(lp1[0]) + Double(st.rawValue)
    }
    print("SWIFT_C percall_logprobs_N1_V16 median_s=\(tLs)  (\(tLs * 1e6) us)  grpo_selective_log_softmax, 1 x 16")
    if sink.isInfinite { print("sink \(sink)") }  // keeps the results alive
} catch {
    print("grpo-bench: error: \(error)")
    exit(1)
}
